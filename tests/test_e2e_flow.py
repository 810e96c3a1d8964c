"""End to end: the finr1-pipeline flow on the embedded profile at reduced size.

Real parts only: the real embedded model served by `transformers serve`, real Prefect
(ephemeral, in a subprocess through the CLI), real local Ray, real TRL training. A recording
proxy of our own sits between the pipeline and the model server, so the test checks what the
server actually received.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from finr1_core.config import REPO_ROOT, embedded_model_dir
from finr1_core.serving import ManagedServer
from finr1_core.storage import Store
from tests.recording_proxy import RecordingProxy

pytestmark = pytest.mark.e2e

RUN_ID = "e2e-run"


def _finr1(args: list[str], env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("finr1")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _weights(d: str) -> dict:
    return load_file(str(Path(d) / "model.safetensors"))


def _differs(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    if not (embedded_model_dir() / ".finr1-ready").exists():
        pytest.fail("embedded model missing: run `finr1 prepare-model` (make test does)")
    tmp = tmp_path_factory.mktemp("e2e")
    storage = tmp / "runs"
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    with ManagedServer(model=None) as srv, RecordingProxy(srv.base_url.rsplit("/v1", 1)[0]) as proxy:
        cfg["serve"] = {"kind": "external"}
        cfg["teacher"]["endpoints"] = [{"name": "proxy", "base_url": proxy.url + "/v1"}]
        cfg["judge"]["endpoints"] = [{"name": "local", "base_url": srv.base_url}]
        cfg["limit"] = 4
        path = tmp / "e2e.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        first = _finr1(["run", "--config", str(path), "--storage", str(storage), "--run-id", RUN_ID], env)
        received = list(proxy.received)
        store = Store(str(storage), RUN_ID)
        before = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in ("records", "prompts", "distill", "scored", "eval")}
        second = _finr1(["run", "--config", str(path), "--storage", str(storage), "--run-id", RUN_ID], env)
        received_second = proxy.received[len(received):]
    return dict(first=first, second=second, store=store, received=received, received_second=received_second, before=before, storage=storage)


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
    teacher_reqs = [r["body"] for r in e2e["received"] if r["path"].endswith("/completions") and r["body"].get("temperature") == 0.6]
    assert len(teacher_reqs) >= distill
    for body in teacher_reqs:
        assert body["prompt"].endswith("<|im_start|>assistant\n<think>\n"), body["prompt"][-80:]
        assert "<|im_start|>system" not in body["prompt"]  # no system prompt
    for t in store.read_rows("distill"):
        assert t["text"].startswith("<think>\n")

    # SFT and GRPO checkpoints differ from the base
    base = _weights(str(embedded_model_dir()))
    sft_dir = Path(store._p(store.uri("models", "sft")))
    grpo_dir = Path(store._p(store.uri("models", "grpo")))
    assert _differs(_weights(str(sft_dir)), base) > 0
    assert _differs(_weights(str(grpo_dir)), base) > 0

    # the report has a row per model
    report = store.read_bytes(store.uri("report", "report.md")).decode()
    for model in ("base", "sft", "grpo"):
        assert f"| {model} |" in report
    assert "| FinQA |" not in report  # header row, not a source row
    assert "FinQA" in report and "Average" in report
    summary = json.loads(store.read_bytes(store.uri("report", "summary.json")))
    assert set(summary["accuracy"]) == {"base", "sft", "grpo"}
    assert all(0.0 <= (v or 0.0) <= 1.0 for row in summary["accuracy"].values() for v in row.values())


def test_second_run_skips_completed_stages(e2e):
    second = e2e["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    store: Store = e2e["store"]
    after = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in e2e["before"]}
    assert after == e2e["before"]  # no shard rewritten
    # nothing was sent to the teacher again (eval and report reuse stored results too)
    assert [r for r in e2e["received_second"] if r["path"].endswith("/completions")] == []
