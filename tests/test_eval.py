"""finr1 eval: the CI math, the table, named targets against real HTTP servers (the project's
fault-injecting fake, a scripted judge), the per-row cache (one new model, resume after a kill)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from finr1_core.eval import BENCHMARKS, EvalError, EvalSettings, build_table, parse_model_spec, run_eval, to_markdown, wilson_ci
from finr1_core.llm import Sampling
from tests.fake_openai import FakeOpenAIProcess
from tests.judge_server import JudgeServer

REPO = Path(__file__).resolve().parent.parent
DATA = {"finqa": str(REPO / "data/samples/finqa"), "tfns": str(REPO / "data/samples/tfns")}


def _settings(**kw) -> EvalSettings:
    base = dict(sampling=Sampling(0.0, 1.0, 40), max_retries=0, max_concurrency=4, timeout_s=20, flush_every=2)
    base.update(kw)
    return EvalSettings(**base)


def test_wilson_interval_known_cases():
    lo, hi = wilson_ci(5, 10)  # the textbook case: 5/10 -> [0.237, 0.763]
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_ci(0, 10)  # never degenerate at 0/n, unlike the normal approximation
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_ci(81, 263)
    assert (round(lo, 3), round(hi, 3)) == (0.255, 0.366)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    assert wilson_ci(10, 10)[1] == 1.0 and round(wilson_ci(10, 10)[0], 4) == 0.7225
    with pytest.raises(ValueError, match="k must be within"):
        wilson_ci(11, 10)


def test_table_average_is_over_benchmark_columns_and_counts_failures():
    rows = [{"model": "m", "benchmark": "finqa", "row_id": f"f{i}", "correct": i < 1, "scored_by": "rule"} for i in range(10)]
    rows += [{"model": "m", "benchmark": "tfns", "row_id": "t0", "correct": True, "scored_by": "judge"},
             {"model": "m", "benchmark": "tfns", "row_id": "t1", "correct": False, "scored_by": "error"}]
    t = build_table(rows, [BENCHMARKS["finqa"], BENCHMARKS["tfns"]], ["m"])
    m = t["models"]["m"]
    assert m["FinQA"]["n"] == 10 and m["FinQA"]["accuracy"] == 0.1
    assert m["TFNS"]["n"] == 2 and m["TFNS"]["failed"] == 1 and m["failed"] == 1
    assert m["Average"] == pytest.approx((0.1 + 0.5) / 2)  # over columns; over rows it would be 2/12
    md = to_markdown(t, reference=True)
    assert "| m | 0.100 [0.02, 0.40] n=10 | 0.500 [0.09, 0.91] n=2 | 0.300 | 1 |" in md
    assert "| *Fin-R1-7B (published), reference* | 0.761 | 0.718 | 0.740 | – |" in md


def test_bad_specs_fail_in_one_line(tmp_path):
    for spec, msg in [("noequals", "expected NAME=PATH"), ("a=http://x/v1", "needs its model name"),
                      (f"a={tmp_path}", "no config.json"), ("bad name=x", "name must be")]:
        with pytest.raises(EvalError, match=msg) as e:
            parse_model_spec(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(EvalError, match="unknown benchmark 'nope'"):
        run_eval(["a=http://127.0.0.1:9/v1#m"], "finqa,nope", DATA, 1, str(tmp_path))
    with pytest.raises(EvalError, match="not a benchmark or source"):
        run_eval(["a=http://127.0.0.1:9/v1#m"], "finqa", {"nope": "x"}, 1, str(tmp_path))
    with pytest.raises(EvalError, match="benchmark finqa: cannot read"):
        run_eval(["a=http://127.0.0.1:9/v1#m"], "finqa", {"finqa": str(REPO / "data/samples/tfns")}, 1, str(tmp_path))


def test_endpoints_failures_judge_and_cache(tmp_path):
    """Two endpoints (one with injected faults) and a scripted judge: failures are labelled and
    counted, undecided rows reach the judge, and re-runs request only what is missing."""
    out = str(tmp_path / "out")
    with FakeOpenAIProcess(seed=3) as good, FakeOpenAIProcess(seed=4, rate_500=0.5) as flaky, \
            JudgeServer(lambda prompt, n: "the candidate matches. \\boxed{1}") as judge:
        jspec = f"judge={judge.base_url}#judge-model"
        models = [f"good={good.url}#fake-teacher", f"flaky={flaky.url}#fake-teacher"]
        res = run_eval(models, "finqa,tfns", DATA, 6, out, judge=jspec, settings=_settings())
        rows = res.rows
        assert len(rows) == 2 * 2 * 6 and res.evaluated == 24
        failed = [r for r in rows if r["scored_by"] == "error"]
        assert failed and all(r["model"] == "flaky" and not r["correct"] and "HTTP 500" in r["error"] for r in failed)
        assert res.table["models"]["flaky"]["failed"] == len(failed)
        assert res.table["models"]["good"]["failed"] == 0
        judged = [r for r in rows if r["scored_by"] == "judge"]
        assert judged and all(r["verdict"] == "correct" and "boxed{1}" in r["judge_reply"] and r["judge_model"] == "judge-model" for r in judged)
        assert len(judge.requests) == len(judged)
        assert all(r["rule_verdict"] == "unknown" for r in judged)
        # the judge saw the candidate's answer, not our prompt wrapper
        assert all("CANDIDATE" in p or "candidate" in p.lower() for p in judge.prompts)
        for r in rows:
            if r["scored_by"] != "error":
                assert r["output"].startswith("<think>\n") and r["sampling"] == json.dumps(_settings().sampling_dict())
        on_disk = pq.read_table(res.uris["rows"]).to_pylist()
        assert len(on_disk) == 24 and {"output", "extracted", "verdict", "scored_by", "judge_reply"} <= set(on_disk[0])
        assert Path(res.uris["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| good |" in Path(res.uris["markdown"]).read_text()

        # re-run, faults off: only the failed rows are requested again
        flaky.configure(rate_500=0.0)
        before = (good.stats()["requests"], flaky.stats()["requests"])
        res2 = run_eval(models, "finqa,tfns", DATA, 6, out, judge=jspec, settings=_settings())
        assert res2.evaluated == len(failed)
        assert good.stats()["requests"] == before[0]
        assert flaky.stats()["requests"] - before[1] == len(failed)
        assert res2.table["models"]["flaky"]["failed"] == 0

        # one new model: only it is evaluated
        res3 = run_eval(models + [f"third={good.url}#other-model"], "finqa,tfns", DATA, 6, out, judge=jspec, settings=_settings())
        assert res3.evaluated == 12 and {r["model"] for r in res3.rows} == {"good", "flaky", "third"}
        assert list(res3.table["models"]) == ["good", "flaky", "third"]


def test_killed_run_resumes_from_the_cache(tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    with FakeOpenAIProcess(seed=5, latency_ms=150) as srv:
        cmd = [sys.executable, "-m", "flows.cli", "eval", "--model", f"ext={srv.url}#fake-teacher", "--benchmarks", "finqa,tfns",
               "--data", f"finqa={DATA['finqa']}", "--data", f"tfns={DATA['tfns']}", "--limit", "20", "--out", out,
               "--concurrency", "2", "--max-tokens", "30", "--no-reference"]
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and srv.stats()["requests"] < 16:
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        first = srv.stats()["requests"]
        assert 16 <= first < 40, first
        parts = list(Path(out, "rows").rglob("part-*.parquet"))
        kept = sum(pq.read_metadata(str(x)).num_rows for x in parts)
        assert kept >= 8 and not Path(out, "table.md").exists()
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        second = srv.stats()["requests"] - first
        assert second == 40 - kept  # nothing kept is asked for again
        assert "requests this run: %d" % second in done.stdout
        table = json.loads(Path(out, "table.json").read_text())
        assert table["models"]["ext"]["FinQA"]["n"] == 20 and table["models"]["ext"]["TFNS"]["n"] == 20


def test_production_config_eval_needs_no_local_base_url():
    """The production eval serves its checkpoints itself (vllm) and judges with the judge role's endpoint."""
    from finr1_core.config import load_config
    from finr1_core.eval.from_config import judge_from_config, server_factory, settings_from_config, targets_from_config
    from finr1_core.serving import VLLMServer, vllm_kwargs

    cfg = load_config(REPO / "configs/production.yaml")
    cfg.eval.models = [dict(name="ext", base_url="http://x:8000/v1/", model="m", api_key_env="FINR1_TEST_EXT_KEY")]
    os.environ["FINR1_TEST_EXT_KEY"] = "k1"
    try:
        ts = targets_from_config(cfg, {"base": "/models/base", "sft": "/models/sft", "grpo": None})
    finally:
        del os.environ["FINR1_TEST_EXT_KEY"]
    assert [(t.name, t.is_local) for t in ts] == [("base", True), ("sft", True), ("ext", False)]
    assert ts[2].base_url == "http://x:8000/v1" and ts[2].api_key == "k1" and ts[2].request_mode == "chat"
    j = judge_from_config(cfg)
    assert j.base_url == "http://vllm-qwen72b.finr1.svc:8000/v1" and j.model == "Qwen/Qwen2.5-72B-Instruct"
    cm = server_factory(cfg)("/models/sft")
    assert hasattr(cm, "__enter__")  # the server starts when the eval enters the block
    cmd = VLLMServer("/models/sft", **vllm_kwargs(cfg.serve, served_model_name="/models/sft")).command()
    assert cmd[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/sft"]
    assert cmd[cmd.index("--served-model-name") + 1] == "/models/sft"
    assert cmd[cmd.index("--reasoning-parser") + 1] == "deepseek_r1"  # a reasoning model's own think tokens
    s = settings_from_config(cfg)
    assert s.sampling.max_tokens == 16384 and s.max_concurrency == 64 and s.prefix == "<think>\n"
    assert cfg.eval.benchmarks == ["fineval", "cfbenchmark"]


def test_finr1_eval_flow_publishes_the_table(tmp_path, monkeypatch):
    """The finr1-eval deployment's flow on a real (ephemeral) Prefect: same parameters as the CLI."""
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a loaded shared CPU
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.eval import finr1_eval

    with FakeOpenAIProcess(seed=11) as srv:
        out = finr1_eval([f"ext={srv.url}#fake-teacher"], str(tmp_path / "out"), "tfns", [f"tfns={DATA['tfns']}"], limit=3, max_tokens=20)
    assert out["evaluated"] == 3 and out["table"]["models"]["ext"]["TFNS"]["n"] == 3

    async def latest():
        async with get_client() as c:
            arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["finr1-eval-table"])))
            return arts[-1].data

    md = asyncio.run(latest())
    assert "| ext |" in md and "n=3" in md and "Wilson" in md


def test_a_model_retrained_into_the_same_folder_is_a_new_target(tmp_path):
    from finr1_core.eval.targets import ModelTarget

    d = tmp_path / "models" / "sft"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"first weights")
    (d / "config.json").write_text("{}")
    before = ModelTarget("sft", path=str(d)).identity_hash()
    assert ModelTarget("sft", path=str(d)).identity_hash() == before  # stable while nothing changes
    (d / "model.safetensors").write_bytes(b"retrained weights, other size")
    assert ModelTarget("sft", path=str(d)).identity_hash() != before  # its cached answers are not reused
