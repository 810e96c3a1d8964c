"""End to end: the finr1-pipeline flow on the embedded profile at reduced size.

Real parts only: real Prefect (ephemeral, in a subprocess through the CLI), real local Ray, the
real embedded model trained with TRL and served by a managed `transformers serve` for
evaluation. DeepSeek-R1 and the 72B judge cannot exist here, so they are a scripted
OpenAI-compatible HTTP server of our own (tests/judge_server.py): the "teacher" answers about two
thirds of the items right, with a closed think block, and the "judge" says 1 unless the
candidate's answer is the wrong one. That makes both routes non-empty, deterministically, and
lets the test check what the teacher server actually received.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from finr1_core.config import REPO_ROOT, embedded_model_dir, load_config
from finr1_core.ingest import ingest_sources
from finr1_core.prompts import build_prompt
from finr1_core.storage import Store
from tests.judge_server import JudgeServer

# two whole pipeline runs in the module fixture: on a loaded 2-core machine (make test runs two
# workers) that outgrows the suite's 900 s per-test limit
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

RUN_ID = "e2e-run"
WRONG = "ZZZ-wrong"


def _finr1(args: list[str], env: dict, timeout: int = 1500) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("finr1")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _weights(d: str) -> dict:
    return load_file(str(Path(d) / "model.safetensors"))


def _differs(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)


def _good(record_id: str) -> bool:
    return int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 3 != 0


def _scripted(oracle: dict[str, dict]):
    """Teacher (R1 stand-in) and judge (72B stand-in) replies, as a function of the prompt."""

    def reply(prompt: str, i: int) -> str:
        if "<<<CANDIDATE_START>>>" in prompt or "<<<INSTRUCTION_START>>>" in prompt:  # a judge prompt
            return "判断：" + ("\\boxed{0}" if WRONG in prompt else "\\boxed{1}")
        rec = next((r for content, r in oracle.items() if content in prompt), None)
        if rec is None:
            return "no idea\n</think>\n\nno answer"
        ans = rec["answer"] if _good(rec["id"]) else WRONG
        return f"Step 1: read the question.\nStep 2: work it out.\nStep 3: check.\n</think>\n\nThe final answer is \\boxed{{{ans}}}"

    return reply


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    if not (embedded_model_dir() / ".finr1-ready").exists():
        pytest.fail("embedded model missing: run `finr1 prepare-model` (make test does)")
    tmp = tmp_path_factory.mktemp("e2e")
    storage = tmp / "runs"
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    cfg["limit"] = 4
    cfg["eval"]["max_rows"] = 1  # per benchmark
    cfg["eval"]["max_tokens"] = 24  # CPU: three served checkpoints answer every held-out benchmark
    # three checkpoints: transformers serve starts in seconds, a CPU vLLM in about a minute each;
    # the eval on vLLM has its own test (tests/test_vllm.py, test_production_profile.py)
    cfg["eval"]["server"] = "transformers"
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    c = load_config(REPO_ROOT / "configs" / "embedded.yaml", {"limit": 4})
    records, _ = ingest_sources(c.data.sources, c.limit)
    oracle = {build_prompt(r, c.prompts)["messages"][0]["content"]: r for r in records}
    with JudgeServer(_scripted(oracle), models=("deepseek-r1-standin", "qwen72b-standin", "fin-r1-endpoint")) as srv:
        # beside the three served checkpoints, the eval stage asks one external endpoint (eval.models)
        cfg["eval"]["models"] = [{"name": "ext", "base_url": srv.base_url, "model": "fin-r1-endpoint"}]
        cfg["teacher"].update(model="deepseek-r1-standin", tokenizer="${EMBEDDED_MODEL}",
                              endpoints=[{"name": "r1-standin", "base_url": srv.base_url}])
        cfg["judge"].update(model="qwen72b-standin", mode="chat", endpoints=[{"name": "judge-standin", "base_url": srv.base_url}])
        path = tmp / "e2e.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        first = _finr1(["run", "--config", str(path), "--storage", str(storage), "--run-id", RUN_ID], env)
        received = list(srv.requests)
        store = Store(str(storage), RUN_ID)
        before = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in ("records", "prompts", "distill", "scored", "sft", "rl", "eval")}
        second = _finr1(["run", "--config", str(path), "--storage", str(storage), "--run-id", RUN_ID], env)
        received_second = srv.requests[len(received):]
    return dict(first=first, second=second, store=store, received=received, received_second=received_second, before=before)


def test_flow_completes_with_real_content(e2e):
    first = e2e["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    store: Store = e2e["store"]

    # each stage's row counts
    records = store.stage_manifest("records")["rows"]
    assert records >= 15  # 9 train sources x (4 - 2 held out), some sources have fewer usable rows
    assert store.stage_manifest("prompts")["rows"] == records
    distill = store.stage_manifest("distill")["rows"]
    assert distill == records  # n = 1 sample per prompt
    scored = store.stage_manifest("scored")["rows"]
    assert scored == distill
    rows = store.read_rows("scored")
    routes = [r["route"] for r in rows]
    assert set(routes) <= {"sft", "rl"} and all(r["route_reason"] for r in rows)
    # SFT rows plus RL rows equal the scored rows (before dedup), and after dedup every
    # removed row is accounted for with a reason
    sft, rl = store.read_rows("sft"), store.read_rows("rl")
    removed = (store.stage_manifest("release") or {}).get("summary", {}).get("removed", {})
    assert routes.count("sft") + routes.count("rl") == scored
    assert len(sft) + len(rl) + sum(removed.values()) == scored
    assert len(sft) >= 1, "the SFT route is empty"

    # every distilled trace starts with the forced "<think>\n", as received by the server
    teacher_reqs = [r["body"] for r in e2e["received"] if r["body"].get("model") == "deepseek-r1-standin"]
    assert len(teacher_reqs) == distill  # exactly once per key
    assert all(b["temperature"] == 0.6 and b["top_p"] == 0.95 for b in teacher_reqs)
    for body in teacher_reqs:  # the embedded teacher's chat-prefill: the assistant turn opened with the prefix
        assert body["messages"][-1] == {"role": "assistant", "content": "<think>\n"}, body["messages"][-1]
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert all(m["role"] != "system" for m in body["messages"])  # no system prompt
    traces = store.read_rows("distill")
    for t in traces:
        assert t["text"].startswith("<think>\n") and "</think>" in t["text"]
    # the routes follow the scripted teacher: right answers with good reasoning go to SFT
    by_rec = {r["record_id"]: r["route"] for r in rows}
    assert any(v == "sft" for v in by_rec.values()) and any(v == "rl" for v in by_rec.values())
    for rid, route in by_rec.items():
        if not _good(rid):
            assert route == "rl", rid

    # SFT and GRPO checkpoints differ from the base
    base = _weights(str(embedded_model_dir()))
    sft_dir = Path(store.fs_path(store.uri("models", "sft")))
    grpo_dir = Path(store.fs_path(store.uri("models", "grpo")))
    assert _differs(_weights(str(sft_dir)), base) > 0
    assert _differs(_weights(str(grpo_dir)), base) > 0

    # the report has a row per model
    report = store.read_bytes(store.uri("report", "report.md")).decode()
    for model in ("base", "sft", "grpo", "ext"):
        assert f"| {model} |" in report
    assert "FinQA" in report and "Average" in report
    summary = json.loads(store.read_bytes(store.uri("report", "summary.json")))
    assert set(summary["accuracy"]) == {"base", "sft", "grpo", "ext"}
    ext_reqs = [r["body"] for r in e2e["received"] if r["body"].get("model") == "fin-r1-endpoint"]
    assert ext_reqs and all(b.get("messages") or b.get("prompt") for b in ext_reqs)  # the endpoint was really asked
    assert all(0.0 <= (v or 0.0) <= 1.0 for row in summary["accuracy"].values() for v in row.values())


def test_second_run_skips_completed_stages(e2e):
    second = e2e["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    store: Store = e2e["store"]
    after = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in e2e["before"]}
    assert after == e2e["before"]  # no shard rewritten
    # nothing was sent to the teacher or the judge again
    assert e2e["received_second"] == []
