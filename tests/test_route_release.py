"""Routing, score_traces against a real scripted judge server, and the dataset release."""
import json
import re

import pyarrow.parquet as pq
import pytest
import yaml

from finr1_core.config import FilterConfig, embedded_model_dir
from finr1_core.dedup import dedup_and_decontaminate
from finr1_core.llm import Endpoint, LLMClient
from finr1_core.release import release_dataset
from finr1_core.route import route, score_traces
from tests.judge_server import JudgeServer


@pytest.mark.parametrize("row,expected", [
    ({"text": "x", "verdict": "correct", "reasoning_judge": 1}, ("sft", "answer_correct_rule+reasoning_1")),
    ({"text": "x", "verdict": "unknown", "answer_judge": 1, "reasoning_judge": 1}, ("sft", "answer_correct_judge+reasoning_1")),
    ({"text": "x", "verdict": "correct", "reasoning_judge": 0}, ("rl", "reasoning_judge_0")),
    ({"text": "x", "verdict": "correct", "reasoning_judge": None}, ("rl", "reasoning_unknown")),
    ({"text": "x", "verdict": "incorrect", "answer_judge": 1, "reasoning_judge": 1}, ("rl", "answer_incorrect_rule")),
    ({"text": "x", "verdict": "unknown", "answer_judge": 0, "reasoning_judge": 1}, ("rl", "answer_judge_0")),
    ({"text": "x", "verdict": "unknown", "answer_judge": None, "reasoning_judge": 1}, ("rl", "answer_unknown")),
    ({"text": "x", "truncated": True, "verdict": "correct", "reasoning_judge": 1}, ("rl", "truncated")),
    ({"text": "x", "finish_reason": "length", "verdict": "correct", "reasoning_judge": 1}, ("rl", "truncated")),
    ({"text": "", "empty": True, "verdict": "correct", "reasoning_judge": 1}, ("rl", "empty")),
    ({"text": "  ", "verdict": "correct", "reasoning_judge": 1}, ("rl", "empty")),
    ({"text": "x", "no_think_close": True, "verdict": "correct", "reasoning_judge": 1}, ("rl", "no_think_close")),
])
def test_route_table(row, expected):
    assert route(row) == expected


def _trace(i, rid, src, q, think, ans, **kw):
    t = {"key": f"k{i}", "record_id": rid, "repo_name": src, "question": q, "reasoning": think, "answer": ans,
         "text": f"<think>\n{think}\n</think>\n\n{ans}", "finish_reason": "stop", "truncated": False,
         "no_think_close": False, "empty": False, "completion_tokens": 40 + 10 * i, "teacher_model": "teacher-x",
         "prompt_template_version": "prompt_v1"}
    t.update(kw)
    return t


RECORDS = {
    "r1": {"id": "r1", "repo_name": "fincorpus", "question": "选哪个？", "choices": {"A": "甲", "B": "乙"}, "answer": "B",
           "answer_type": "mcq_single", "module": "金融专业知识", "language": "zh"},
    "r2": {"id": "r2", "repo_name": "finqa", "question": "What is the growth?", "answer": "0.134", "answer_type": "numeric",
           "module": "金融推理类业务知识", "language": "en"},
    "r3": {"id": "r3", "repo_name": "fincuge", "question": "[AJ1] 事件原因？", "answer": "供给减少导致价格上升", "answer_type": "free_text",
           "module": "金融非推理类业务知识", "language": "zh"},
    "r4": {"id": "r4", "repo_name": "fincuge", "question": "[AJ0] 事件主体？", "answer": "某公司", "answer_type": "free_text",
           "module": "金融非推理类业务知识", "language": "zh"},
    "r5": {"id": "r5", "repo_name": "fincuge", "question": "[AJX] 摘要？", "answer": "一段摘要", "answer_type": "free_text",
           "module": "金融非推理类业务知识", "language": "zh"},
    "r6": {"id": "r6", "repo_name": "tfns", "question": "[RJ0] Sentiment of: $AAPL up", "answer": "Bullish", "answer_type": "label",
           "module": "金融非推理类业务知识", "language": "en"},
}
TRACES = [
    _trace(0, "r1", "fincorpus", "选哪个？\nA、甲\nB、乙", "第一步…第二步…第三步…", r"\boxed{B}"),
    _trace(1, "r2", "finqa", "What is the growth?", "step 1, 2, 3", r"\boxed{20\%}"),
    _trace(2, "r3", "fincuge", "[AJ1] 事件原因？", "分析…", "价格上升是因为供给减少"),
    _trace(3, "r4", "fincuge", "[AJ0] 事件主体？", "分析…", "另一家公司"),
    _trace(4, "r5", "fincuge", "[AJX] 摘要？", "分析…", "摘要文本"),
    _trace(5, "r6", "tfns", "[RJ0] Sentiment of: $AAPL up", "up means bullish", r"\boxed{Bullish}"),
    _trace(6, "r1", "fincorpus", "选哪个？\nA、甲\nB、乙", "没写完", "", truncated=True, finish_reason="length"),
    _trace(7, "r2", "finqa", "What is the growth?", "", "", text="", empty=True),
    _trace(8, "r2", "finqa", "What is the growth?", "think only", "", text="<think>\nthink only 13.4%", no_think_close=True),
    _trace(9, "r2", "finqa", "What is the growth?", "so 13.4%", r"\boxed{13.4\%}"),
]


def scripted_judge(prompt, i):
    if "推理质量评审员" in prompt:
        return r"逐条检查……\boxed{0}" if "[RJ0]" in prompt else r"逐条检查……\boxed{1}"
    if "[AJ1]" in prompt:
        return r"一致。\boxed{1}"
    if "[AJ0]" in prompt:
        return r"不一致。\boxed{0}"
    return "我无法判断"  # no verdict: retried, then unknown


@pytest.fixture()
def scored():
    with JudgeServer(scripted_judge) as srv:
        client = LLMClient([Endpoint("judge", srv.base_url)], model="judge", mode="chat", max_retries=0)
        rows = score_traces(TRACES, RECORDS, client, FilterConfig(judge_retries=1))
        yield rows, srv


def test_score_traces_routes_and_calls_judges_only_where_needed(scored):
    rows, srv = scored
    by = {r["key"]: r for r in rows}
    expect = {
        "k0": ("correct", "sft", "answer_correct_rule+reasoning_1"),
        "k1": ("incorrect", "rl", "answer_incorrect_rule"),
        "k2": ("unknown", "sft", "answer_correct_judge+reasoning_1"),
        "k3": ("unknown", "rl", "answer_judge_0"),
        "k4": ("unknown", "rl", "answer_unknown"),
        "k5": ("correct", "rl", "reasoning_judge_0"),
        "k6": (None, "rl", "truncated"),
        "k7": (None, "rl", "empty"),
        "k8": (None, "rl", "no_think_close"),
        "k9": ("correct", "sft", "answer_correct_rule+reasoning_1"),
    }
    for k, (verdict, rt, reason) in expect.items():
        r = by[k]
        if verdict:
            assert r["verdict"] == verdict, (k, r["verdict"], r["verify_reason"])
        assert (r["route"], r["route_reason"]) == (rt, reason), k
        assert r["answer_judge_version"] == "answer_judge_v1" and r["reasoning_judge_version"] == "reasoning_judge_v1"
    assert by["k2"]["answer_judge"] == 1 and by["k3"]["answer_judge"] == 0
    assert by["k4"]["answer_judge"] is None and by["k4"]["answer_judge_attempts"] == 2 and "no \\boxed" in by["k4"]["answer_judge_error"]
    assert by["k0"]["gold"] == "B" and by["k0"]["extracted"] == "B" and by["k0"]["module"] == "金融专业知识"
    # answer judge: only the three rule-unknown rows (k4 twice: one retry); reasoning judge: only answer-correct rows
    aj = [p for p in srv.prompts if "答案评审员" in p]
    rj = [p for p in srv.prompts if "推理质量评审员" in p]
    assert len(aj) == 4 and len(rj) == 4  # k0, k2, k5, k9
    assert not any("没写完" in p for p in srv.prompts)  # flagged traces never reach a judge
    assert any("任务领域：金融专业知识 / fincorpus" in p for p in rj)
    assert all(r["route"] in ("sft", "rl") for r in rows) and len(rows) == len(TRACES)


def test_score_traces_without_judge_is_rules_only():
    rows = score_traces(TRACES, RECORDS, None, FilterConfig())
    assert all(r["route"] == "rl" for r in rows)
    by = {r["key"]: r for r in rows}
    assert by["k0"]["route_reason"] == "reasoning_unknown" and by["k2"]["route_reason"] == "answer_unknown"


def test_release_loads_with_datasets_and_has_card_and_plots(scored, tmp_path):
    rows, _ = scored
    extra = dict(TRACES[0], key="k0-dup", record_id="r1-copy")  # same question as r1: an exact duplicate
    rows = rows + score_traces([extra], {"r1-copy": RECORDS["r1"]}, None, FilterConfig())
    res = dedup_and_decontaminate(rows, {"eval-1": "What is the growth? " * 3}, FilterConfig(decontam_ngram=13))
    steps = {(r["key"], r["step"]) for r in res.removed}
    assert ("k0-dup", "exact_dup") in steps
    # every trace of r2 ("What is the growth?") leaks into the eval text: all are removed, with the reason
    assert {k for k, st in steps if st == "decontam"} == {"k1", "k7", "k8", "k9"}
    assert all("eval-1" in r["reason"] for r in res.removed if r["step"] == "decontam")
    out = tmp_path / "release"
    info = release_dataset(rows, str(out), removals=res.removed)
    removed = {r["key"] for r in res.removed}
    n_sft = sum(1 for r in rows if r["route"] == "sft" and r["key"] not in removed)
    assert info["counts"]["sft"] == n_sft and info["counts"]["sft"] + info["counts"]["rl"] == len(rows) - len(removed)

    from datasets import load_dataset
    ds = load_dataset("parquet", data_files={"sft": str(out / "data" / "sft-*.parquet"), "rl": str(out / "data" / "rl-*.parquet")})
    assert ds["sft"].num_rows == n_sft
    ex = ds["sft"][0]
    assert ex["repo_name"] in ("fincorpus", "fincuge", "finqa") and ex["module"]
    assert [m["role"] for m in ex["conversation"]] == ["user", "assistant"]
    a = ex["conversation"][1]["content"]
    assert re.match(r"^<think>\n.*\n</think>\n\n.+", a, re.S), a
    assert ex["route"] == "sft" and ex["reasoning_judge"] == 1 and ex["answer_judge_version"] == "answer_judge_v1"
    assert json.loads(ex["lineage"])["teacher_model"] == "teacher-x"
    assert set(ds["rl"]["route"]) == {"rl"}
    assert sorted(ds["rl"]["key"]) == ["k3", "k4", "k5", "k6"] and "truncated" in ds["rl"]["route_reason"]
    assert sorted(ds["sft"]["key"]) == ["k0", "k2"]

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert {s["split"] for s in header["configs"][0]["data_files"]} == {"sft", "rl"}
    assert header["license"] == "other"
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == info["counts"]
    for must in ["| Dataset | Data Volume |", "CC BY-NC-SA", "answer_judge_v1", "reasoning_judge_v1", "prompt_v1",
                 "Filtering steps", "exact_dup", "k0-dup", "| fincorpus |", "reasoning_judge_0"]:
        assert must in card or must.replace("CC BY-NC-SA", "MIT") in card, must
    assert "| finqa | FinQA" in card and "MIT" in card
    for png in ["pass_rate_by_source.png", "pass_rate_by_round.png", "token_length_by_route.png"]:
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [json.loads(l)["key"] for l in (out / "removals.jsonl").read_text().splitlines()] == [r["key"] for r in res.removed]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_source"]["fincuge"]["round1_in"] == 3 and stats["per_source"]["fincuge"]["round1_pass"] == 1

    # TRL takes the split once conversation -> messages
    from trl.data_utils import is_conversational
    msgs = ds["sft"].rename_column("conversation", "messages")
    assert is_conversational(msgs[0])
    assert pq.read_schema(out / "data" / "rl-00000-of-00001.parquet").field("conversation").type.value_type.names == ["role", "content"]


def test_sft_trainer_accepts_the_released_split(scored, tmp_path):
    model_dir = embedded_model_dir()
    if not (model_dir / "config.json").exists():
        pytest.skip("embedded model not prepared (make test prepares it)")
    rows, _ = scored
    out = tmp_path / "rel"
    release_dataset(rows, str(out))
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("parquet", data_files={"sft": str(out / "data" / "sft-*.parquet")})["sft"]
    ds = ds.rename_column("conversation", "messages").select_columns(["messages"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    # the embedded model's tokenizer and chat template, with tiny random weights: the point is the data path
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    args = SFTConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=1, max_length=64,
                     report_to=[], save_strategy="no", logging_steps=1, use_cpu=True)
    tr = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert "input_ids" in tr.train_dataset.column_names and len(tr.train_dataset) == ds.num_rows
    result = tr.train()
    assert result.global_step == 1 and result.training_loss > 0


def test_release_to_s3_on_moto(scored):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    rows, _ = scored
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s").create_bucket(Bucket="rel")
        opts = {"key": "k", "secret": "s", "endpoint_url": url}
        info = release_dataset(rows, "s3://rel/fin/v1", storage_options=opts)
        import pandas as pd
        df = pd.read_parquet("s3://rel/fin/v1/data/sft-00000-of-00001.parquet", storage_options=opts)
        assert len(df) == info["counts"]["sft"] > 0
        import fsspec
        fs = fsspec.filesystem("s3", **opts)
        assert fs.exists("rel/fin/v1/README.md") and fs.exists("rel/fin/v1/plots/pass_rate_by_round.png")
    finally:
        srv.stop()
