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
    summary = json.loads(p.stdout[p.stdout.rindex("\n{\n") + 1:])  # the closing summary (its nested dicts open mid-line)
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


def test_cli_passes_the_accelerate_config_through(tiny, tmp_path):
    """``finr1 train --accelerate-config FILE`` runs accelerate launch with that file: two processes come
    from the file alone (no --num-processes; torchrun-style, the ranks join over gloo on a CPU host),
    and the job's engine line says so."""
    model, data = tiny
    cfg = tmp_path / "two-cpu.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\nmachine_rank: 0\n"
                   "num_processes: 2\nmixed_precision: 'no'\n")
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "sft", "--recipe", RECIPE, "--data", data, "--output", str(tmp_path / "out"),
                        "--accelerate-config", str(cfg), "--set", f"model_name_or_path={model}", "--set", "max_steps=2",
                        "--set", "per_device_train_batch_size=1", "--set", "max_length=16"],
                       capture_output=True, text=True, env=job_env(), timeout=600, cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    engine = [json.loads(line.split("finr1-train ", 1)[1]) for line in r.stdout.splitlines() if '"event": "engine"' in line]
    assert len(engine) == 1, r.stdout[-3000:]  # rank 0 alone prints it
    assert engine[0]["distributed_type"] == "MULTI_CPU" and engine[0]["processes"] == 2 and engine[0]["device"].startswith("cpu")
    assert engine[0]["cpu_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared out between the two
    result = json.loads(r.stdout[r.stdout.rindex("\n{"):])
    assert result["steps"] == 2 and result["engine"]["processes"] == 2 and result["peak_memory_gib"] is None  # no GPU here


def test_one_cpu_process_uses_every_core(tiny, tmp_path):
    """accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise: a 1-process CPU job ran on one
    core of two. The launcher gives each process its share of the cores (the engine line says how many)."""
    model, data = tiny
    env = {k: v for k, v in job_env().items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "sft", "--recipe", RECIPE, "--data", data, "--output", str(tmp_path / "out"),
                        "--set", f"model_name_or_path={model}", "--set", "max_steps=1", "--set", "per_device_train_batch_size=1",
                        "--set", "max_length=16"], capture_output=True, text=True, env=env, timeout=600, cwd=str(REPO_ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    engine = [json.loads(line.split("finr1-train ", 1)[1]) for line in r.stdout.splitlines() if '"event": "engine"' in line]
    assert len(engine) == 1 and engine[0]["processes"] == 1 and engine[0]["cpu_threads"] == len(os.sched_getaffinity(0)), r.stdout[-3000:]


def test_cli_bad_accelerate_config_is_one_line(tiny, tmp_path):
    model, data = tiny
    base = [sys.executable, "-m", "flows.cli", "train", "sft", "--recipe", RECIPE, "--data", data, "--output", str(tmp_path / "o")]
    bad = tmp_path / "ds.yaml"
    bad.write_text("distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: no/such/zero3.json\n")
    cases = [(str(tmp_path / "missing.yaml"), f"recipe error: file not found: {tmp_path / 'missing.yaml'}"),
             (str(tmp_path), f"recipe error: accelerate_config: {tmp_path} is a directory, not a config file"),
             (str(bad), f"recipe error: accelerate_config: {bad} names deepspeed_config_file no/such/zero3.json, which is not a file")]
    for path, expected in cases:
        r = subprocess.run(base + ["--accelerate-config", path], capture_output=True, text=True, env=job_env(), timeout=300, cwd=str(REPO_ROOT))
        assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
        assert expected in (r.stderr + r.stdout).strip().splitlines()[-1], (r.stdout, r.stderr)


def test_compiled_grpo_sizes_its_static_cache_once(tiny, tmp_path):
    """generation_fallback: compiled gives one static KV cache for the longest prompt + the completion
    cap, so a new prompt length never recompiles the decode."""
    from transformers import AutoTokenizer

    from finr1_core.training.grpo import build_grpo_trainer
    from finr1_core.training.recipes import load_recipe

    model, _ = tiny
    tok = AutoTokenizer.from_pretrained(model)
    rows = [{"messages": [{"role": "user", "content": " ".join(f"w{j}" for j in range(n))}], "answer": "1", "answer_type": "numeric"}
            for n in (3, 40, 12)]
    recipe = load_recipe("grpo", REPO_ROOT / "configs/recipes/smollm2-135m/grpo.yaml",
                         {"model_name_or_path": model, "max_completion_length": 24, "cache_implementation": "static",
                          "generation_fallback": "compiled", "num_generations": 2, "per_device_train_batch_size": 2,
                          "generation_kwargs": '{"top_k": 7}'}, output_dir=str(tmp_path / "g"))
    trainer, tok, n = build_grpo_trainer(recipe, rows)
    longest = max(len(tok(tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) + "<think>\n",
                          add_special_tokens=False)["input_ids"]) for r in rows)
    assert trainer.generation_config.max_cache_len == longest + 24 and longest > 40
    assert trainer.generation_config.top_k == 7 and trainer.generation_config.disable_compile is False
    assert trainer.remove_input_grad_hooks and trainer.defer_stop_check  # finr1's compiled-decode generation
