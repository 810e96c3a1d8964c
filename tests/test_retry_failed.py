"""`finr1 retry-failed RUN_ID`: after a run whose teacher failed for some prompts, only those
prompts are sent again; the shards that completed are not rewritten and no key is duplicated.

Real Prefect (ephemeral, through the CLI), real Ray, and a scripted OpenAI-compatible HTTP
server of our own standing in for DeepSeek-R1 and the judge, which fails on purpose.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finr1_core.config import REPO_ROOT, embedded_model_dir
from finr1_core.storage import Store
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.e2e

FAILING_SOURCE_MARK = "financial tweet"  # in every TFNS prompt; the stand-in fails on them


def _finr1(args, env):
    exe = Path(sys.executable).with_name("finr1")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)


def test_retry_failed_redoes_only_the_failed_requests(tmp_path):
    if not (embedded_model_dir() / ".finr1-ready").exists():
        pytest.fail("embedded model missing: run `finr1 prepare-model` (make test does)")
    state = {"fail": True}

    def reply(prompt: str, i: int):
        if "<<<CANDIDATE_START>>>" in prompt or "<<<INSTRUCTION_START>>>" in prompt:
            return "\\boxed{1}"
        if state["fail"] and FAILING_SOURCE_MARK in prompt:
            return (500, '{"error": {"message": "injected teacher failure"}}')
        return "Step 1.\nStep 2.\nStep 3.\n</think>\n\nThe answer is \\boxed{A}"

    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    cfg["limit"] = 4
    cfg["distill"]["shard_size"] = 4
    storage = tmp_path / "runs"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with JudgeServer(reply, models=("r1-standin", "judge-standin")) as srv:
        cfg["serve"] = {"kind": "external"}
        cfg["teacher"].update(model="r1-standin", tokenizer="${EMBEDDED_MODEL}", max_retries=0,
                              endpoints=[{"name": "r1", "base_url": srv.base_url}])
        cfg["judge"].update(model="judge-standin", mode="chat", endpoints=[{"name": "j", "base_url": srv.base_url}])
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))

        first = _finr1(["run", "--config", str(path), "--storage", str(storage), "--run-id", "r1", "--stop-after", "score"], env)
        assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
        assert "shard(s) failed" in first.stderr and "finr1 retry-failed r1" in first.stderr

        store = Store(str(storage), "r1")
        prompts = store.read_rows("prompts")
        failing = [p for p in prompts if FAILING_SOURCE_MARK in p["messages"]]
        assert failing, "the test needs prompts the stand-in fails on"
        failed_shards = {e["shard"] for e in store.shards("prompts")} - {e["shard"] for e in store.shards("distill")}
        assert failed_shards and len(failed_shards) < len(store.shards("prompts"))
        committed = {e["shard"]: e["committed_at"] for e in store.shards("distill")}
        teacher_before = [r for r in srv.requests if r["body"].get("model") == "r1-standin"]

        state["fail"] = False
        second = _finr1(["retry-failed", "r1", "--storage", str(storage), "--stop-after", "score"], env)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert f"distill: {len(failed_shards)} shard(s) to redo" in second.stdout
        teacher_after = [r for r in srv.requests if r["body"].get("model") == "r1-standin"][len(teacher_before):]

    # only the requests that never completed were sent again, once each
    assert len(teacher_after) == len(failing)
    assert all(FAILING_SOURCE_MARK in r["prompt"] for r in teacher_after)
    # completed shards were not rewritten; the stage is whole, with every key exactly once
    assert {e["shard"]: e["committed_at"] for e in store.shards("distill") if e["shard"] in committed} == committed
    keys = [r["key"] for r in store.read_rows("distill")]
    assert len(keys) == len(set(keys)) == len(prompts)
    assert store.stage_manifest("scored")["rows"] == len(prompts)
