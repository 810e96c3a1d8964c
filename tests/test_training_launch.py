"""The training job through the real launcher: 2 CPU processes over gloo, and kill-then-resume.

A tiny random Qwen2-shaped model (built here, no hub) keeps each step well under a second.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from finr1_core.config import REPO_ROOT
from finr1_core.training.data import write_rows
from finr1_core.training.launch import job_env, train

RECIPE = str(REPO_ROOT / "configs" / "recipes" / "smollm2-135m" / "sft.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from train_throughput import tokenizer_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    d = tokenizer_dir(tmp_path_factory.mktemp("tiny") / "m")
    tok = AutoTokenizer.from_pretrained(d)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    rows = [{"conversation": [{"role": "user", "content": f"w{i} w{i + 1}"}, {"role": "assistant", "content": f"w{i} {i % 10}"}]} for i in range(40)]
    data = write_rows(rows, str(d.parent / "sft.parquet"))
    return str(d), data


def test_two_processes_see_different_rows(tiny, tmp_path):
    model, data = tiny
    lines: list[str] = []
    res = train("sft", RECIPE, data, str(tmp_path / "out"), num_processes=2,
                overrides={"model_name_or_path": model, "max_steps": 2, "per_device_train_batch_size": 1, "max_length": 16,
                           "log_rows": True}, on_line=lines.append)
    assert res["steps"] == 2 and res["train_loss"] > 0
    seen = {}
    for r in (0, 1):
        texts = [json.loads(x)["text"] for x in (tmp_path / "out" / "rows_seen" / f"rank{r}.jsonl").read_text().splitlines()]
        seen[r] = set(texts)
    assert len(seen[0]) == 2 and len(seen[1]) == 2 and not (seen[0] & seen[1]), seen  # every row is unique
    assert any(l.startswith("finr1-train ") and '"event": "log"' in l for l in lines)  # streamed progress


def test_killed_run_resumes_from_its_checkpoint(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    # save_total_limit: the recipe keeps 2 checkpoints, and on a quick machine checkpoint-3 was rotated out
    # before the poll below saw it (the job then ran to the end un-killed)
    sets = ["model_name_or_path=" + model, "max_steps=40", "save_steps=3", "save_total_limit=100", "per_device_train_batch_size=1",
            "max_length=16"]
    cmd = [sys.executable, "-m", "finr1_core.training", "sft", "--recipe", RECIPE, "--data", data, "--output", str(out)]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.Popen(cmd, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint-3" / "trainer_state.json").exists():
            assert p.poll() is None and time.time() < deadline, "no checkpoint before the job ended"
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (out / "train_result.json").exists()  # it really died mid-run
    res = train("sft", RECIPE, data, str(out), overrides=dict(s.split("=", 1) for s in sets))
    assert res["resumed_from_step"] >= 3 and res["steps"] == 40
    assert res["steps_this_attempt"] == 40 - res["resumed_from_step"]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "flows.cli", "train", *args], capture_output=True, text=True,
                          env=job_env(), cwd=str(REPO_ROOT), timeout=timeout)


def test_cli_trains_on_two_ray_train_workers(tiny, tmp_path):
    """`finr1 train sft --launcher ray --num-processes 2`: Ray Train's TorchTrainer, two gloo ranks on a local Ray."""
    model, data = tiny
    out = tmp_path / "out"
    p = _cli("sft", "--recipe", RECIPE, "--data", data, "--output", str(out), "--launcher", "ray", "--num-processes", "2",
             "--set", f"model_name_or_path={model}", "--set", "max_steps=2", "--set", "per_device_train_batch_size=1",
             "--set", "max_length=16", "--set", "log_rows=true")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    summary = json.loads(p.stdout[p.stdout.rindex("{\n"):])
    assert summary["steps"] == 2 and summary["train_loss"] > 0 and summary["output_uri"] == str(out)
    seen = [set(json.loads(x)["text"] for x in (out / "rows_seen" / f"rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert len(seen[0]) == 2 and len(seen[1]) == 2 and not (seen[0] & seen[1]), seen
    assert (out / "ray").is_dir()  # Ray Train's run folder sits beside the checkpoints
    assert "RayTrainWorker" in p.stdout + p.stderr  # the workers' output streamed through the driver


def test_cli_bad_recipe_field_and_launcher_are_one_line(tiny, tmp_path):
    model, data = tiny
    p = _cli("sft", "--recipe", RECIPE, "--data", data, "--output", str(tmp_path / "o"), "--set", "learning_rate=fast", timeout=120)
    assert p.returncode != 0 and "invalid float value: 'fast'" in p.stderr + p.stdout and "Traceback" not in p.stderr + p.stdout
    p = _cli("sft", "--recipe", RECIPE, "--data", data, "--output", str(tmp_path / "o"), "--launcher", "slurm", timeout=120)
    assert p.returncode != 0 and "launcher: 'slurm' is not one of accelerate, ray" in p.stderr + p.stdout
