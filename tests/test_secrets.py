"""API keys: from the environment or a Prefect Secret block, sent to the endpoint, and never
written to Parquet, manifests, artifacts, reports or logs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finr1_core.config import REPO_ROOT, embedded_model_dir
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.e2e

SECRET = "sk-finr1-test-0123456789abcdef"


def test_teacher_key_from_a_prefect_secret_block_is_sent_and_never_written(tmp_path):
    if not (embedded_model_dir() / ".finr1-ready").exists():
        pytest.fail("embedded model missing: run `finr1 prepare-model` (make test does)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINR1_API_KEY")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    save = subprocess.run([sys.executable, "-c", "from prefect.blocks.system import Secret; "
                           f"Secret(value={SECRET!r}).save('finr1-teacher-key', overwrite=True)"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert save.returncode == 0, save.stderr[-2000:]

    def reply(prompt: str, i: int) -> str:
        return "Step 1.\nStep 2.\nStep 3.\n</think>\n\n\\boxed{A}"

    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    cfg["limit"] = 2
    storage = tmp_path / "runs"
    with JudgeServer(reply, models=("r1-standin", "judge-standin")) as srv:
        cfg["serve"] = {"kind": "external"}
        cfg["teacher"].update(model="r1-standin", tokenizer="${EMBEDDED_MODEL}",
                              endpoints=[{"name": "r1", "base_url": srv.base_url, "api_key_secret": "finr1-teacher-key"}])
        cfg["judge"].update(model="judge-standin", mode="chat", endpoints=[{"name": "j", "base_url": srv.base_url}])
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        r = subprocess.run([str(Path(sys.executable).with_name("finr1")), "run", "--config", str(path), "--storage", str(storage),
                            "--run-id", "s1", "--stop-after", "distill"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        teacher = [q for q in srv.requests if q["body"].get("model") == "r1-standin"]
    assert teacher and all(q["authorization"] == f"Bearer {SECRET}" for q in teacher)
    assert SECRET not in r.stdout + r.stderr
    written = [p for p in storage.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written)
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []
