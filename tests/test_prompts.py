"""Prompt policy: no system prompt, math suffix (not doubled), choices rendered, version recorded."""
from __future__ import annotations

from pathlib import Path

from finr1_core.config import PromptConfig
from finr1_core.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from finr1_core.sources import load_source

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
CFG = PromptConfig()
ZH = "请一步步推理，并把最终答案放到 \\boxed{}。"
EN = "Please reason step by step, and put your final answer within \\boxed{}."


def _recs(name):
    return load_source(name, str(SAMPLES / name / "sample.jsonl")).records


def test_defaults_match_the_issue():
    assert CFG.math_suffix_zh == ZH and CFG.math_suffix_en == EN and CFG.think_prefix == "<think>\n"


def test_no_system_prompt_and_version_recorded():
    for name in ("finqa", "tfns", "financeiq", "fincorpus"):
        for r in _recs(name)[:5]:
            p = build_prompt(r, CFG)
            assert [m["role"] for m in p["messages"]] == ["user"]
            assert p["prefix"] == "<think>\n"
            assert p["prompt_template_version"] == PROMPT_TEMPLATE_VERSION
            assert len(p["prompt_hash"]) == 16


def test_math_suffix_en_and_zh():
    fq = _recs("finqa")[0]
    c = build_prompt(fq, CFG)["messages"][0]["content"]
    assert c.startswith(fq["question"]) and c.endswith("\n\n" + EN) and c.count("boxed") == 1
    pee = _recs("finpee")[0]
    c = build_prompt(pee, CFG)["messages"][0]["content"]
    assert c.endswith("\n" + ZH)


def test_non_math_items_get_no_suffix():
    t = _recs("tfns")[0]
    c = build_prompt(t, CFG)["messages"][0]["content"]
    assert c == t["question"] and "boxed" not in c


def test_source_boxed_instruction_is_not_doubled():
    fc = [r for r in _recs("fincorpus") if r["math_reasoning"]][0]
    c = build_prompt(fc, CFG)["messages"][0]["content"]
    assert "放在boxed{}中" in c and ZH not in c and c.count("boxed") == 1
    ant = [r for r in _recs("ant_finance_finr1eval") if r["math_reasoning"]][0]
    c = build_prompt(ant, CFG)["messages"][0]["content"]
    assert "把最终答案放入\\boxed{}" in c and ZH not in c and c.count("boxed") == 1


def test_choices_rendered_once():
    r = [x for x in _recs("financeiq") if "投资连结保险" in x["question"]][0]
    c = build_prompt(r, CFG)["messages"][0]["content"]
    assert c == r["question"] + "\nA. 保险风险和费用风险由保单持有人承担\nB. 投资账户的资产不需单独管理\nC. 投资单位的买入价和卖出价是对投保人而言的\nD. 投资账户中资产的投资风险由保险公司承担"
    # FinCorpus instructions already list "A、..." lines: not rendered again
    fc = _recs("fincorpus")[0]
    fc = {**fc, "choices": {"A": "社会保障税", "B": "社会保障收费", "C": "一般税收", "D": "企业收入和公债收入"}}
    c = build_prompt(fc, CFG)["messages"][0]["content"]
    assert c.count("社会保障税") == 1


def test_configurable_suffix_and_hash_changes():
    fq = _recs("finqa")[0]
    cfg = PromptConfig(math_suffix_en="Box it.")
    p1, p2 = build_prompt(fq, CFG), build_prompt(fq, cfg)
    assert p2["messages"][0]["content"].endswith("\n\nBox it.")
    assert p1["prompt_hash"] != p2["prompt_hash"]
    assert build_prompt(fq, CFG)["prompt_hash"] == p1["prompt_hash"]
