"""`estimate.dry_run`: per-source counts, token counts, cost and wall time, without writing or
calling anything."""
from __future__ import annotations

import pytest

from finr1_core.config import embedded_model_dir, load_config
from finr1_core.estimate import _heuristic, dry_run, to_markdown
from finr1_core.prompts import build_prompt
from finr1_core.sources import load_source

TRAIN = ["finqa", "convfinqa", "tfns", "fincuge", "financeiq", "finpee", "ant_finance", "fincorpus", "quant_trading_instruct"]


@pytest.fixture(scope="module")
def est(tmp_path_factory):
    if not (embedded_model_dir() / "tokenizer_config.json").exists():
        pytest.skip("embedded model not prepared (make test prepares it)")
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, {"storage_root": str(root), "teacher.tokens_per_s": 48.0, "judge.tokens_per_s": 96.0,
                             "teacher.price_per_m_input": 0.55, "teacher.price_per_m_output": 2.19,
                             "judge.price_per_m_input": 1.0, "judge.price_per_m_output": 4.0})
    out = dry_run(cfg)
    assert list(root.iterdir()) == []  # nothing written
    return cfg, out


def test_per_source_counts(est):
    cfg, e = est
    by = {s["source"]: s for s in e["sources"]}
    assert list(by) == TRAIN + ["fineval"]
    for name in TRAIN:  # limit 4 per source, the last eval_holdout=2 held out
        assert (by[name]["role"], by[name]["records"], by[name]["quarantined"], by[name]["heldout"], by[name]["prompts"]) == ("train", 4, 0, 2, 2), name
        assert by[name]["teacher_requests"] == 2 and by[name]["teacher_out"] == 2 * cfg.teacher.max_tokens
        assert by[name]["reasoning_judge_out"] == 2 * cfg.judge.max_tokens
    assert (by["fineval"]["role"], by["fineval"]["records"], by["fineval"]["heldout"], by["fineval"]["prompts"]) == ("eval", 4, 4, 0)
    assert (e["records"], e["train"], e["heldout"]) == (40, 18, 22)


def test_tokens_cost_and_wall_time(est):
    cfg, e = est
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    recs = load_source("finqa", cfg.data.sources[0].path, limit=4).records[:2]
    want = sum(len(tok.encode("".join(m["content"] for m in p["messages"]) + p["prefix"], add_special_tokens=False)) + 12
               for p in (build_prompt(r, cfg.prompts) for r in recs))
    by = {s["source"]: s for s in e["sources"]}
    assert by["finqa"]["teacher_in"] == want
    assert e["token_count"]["teacher"] == "tokenizer SmolLM2-135M-Instruct-bf16"
    t = e["totals"]
    assert t["teacher_requests"] == 18 and t["teacher_out"] == 18 * cfg.teacher.max_tokens
    assert e["cost_usd"]["teacher"] == pytest.approx(t["teacher_in"] * 0.55e-6 + t["teacher_out"] * 2.19e-6)
    j_in, j_out = t["answer_judge_in"] + t["reasoning_judge_in"], t["answer_judge_out"] + t["reasoning_judge_out"]
    assert e["cost_usd"]["judge"] == pytest.approx(j_in * 1e-6 + j_out * 4e-6)
    assert e["wall_time_s"] == {"teacher": pytest.approx(t["teacher_out"] / 48.0), "judge": pytest.approx(j_out / 96.0)}
    md = to_markdown(e)
    assert "| finqa | train | 4 | 0 | 2 | 2 |" in md and "| teacher | 18 |" in md and "### tfns" in md
    assert "Please reason step by step" in by["finqa"]["example_prompt"] and by["finqa"]["example_prompt"].endswith("<think>\n")


def test_heuristic_without_local_tokenizer(tmp_path):
    cfg = load_config(None, {"storage_root": str(tmp_path), "teacher.model": "deepseek-ai/DeepSeek-R1", "judge.model": "Qwen/Qwen2.5-72B-Instruct",
                             "limit": 2})
    cfg.data.sources = cfg.data.sources[:2]
    e = dry_run(cfg)
    assert e["token_count"]["teacher"].startswith("heuristic")
    assert e["wall_time_s"] == {"teacher": None, "judge": None} and "unknown (set tokens_per_s)" in to_markdown(e)
    assert _heuristic("abcd" * 10) == 11 and _heuristic("金融" * 3) == 5
