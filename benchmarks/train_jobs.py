"""The training jobs users run, timed: the production recipes through finr1's launcher.

Every case is one ``finr1_core.training.launch.train`` call, the same call the pipeline's training
stage and ``finr1 train`` make (``accelerate launch`` of ``python -m finr1_core.training``), on the
production recipes in ``configs/recipes/qwen2.5-7b-instruct/`` adapted to this machine. Figures come
from the job itself (its wall seconds per optimizer step, TRL's ``completions/mean_length`` and ``num_tokens``, the job's
``engine`` line and peak GPU memory), never from a bare ``model.generate``.

Two groups, each with its baseline in the same run:

``--group grpo`` (the default): GRPO, vLLM off, 0.5B Qwen2.5 shapes (random weights, 49,152-token
vocabulary), prompts of 10-300 words, 32 completions per step (the recipe's batch of 8 x 4
accumulation steps: 4 prompts x 8 generations), at most 256 new tokens. Random weights never choose
EOS, so transformers' ``exponential_decay_length_penalty`` makes completions stop at varied lengths
as real ones do. Cases: ``generation_fallback: generate`` (baseline), ``compiled`` (the recipe's
choice: static KV cache, decode compiled by transformers), and ``compiled`` with Liger's layer
kernels forced back on (what the recipe did before: dynamo cannot trace them).

``--group engines``: SFT and GRPO steps under plain ``accelerate launch`` (baseline), DeepSpeed
ZeRO-3 (``infra/accelerate/zero3-single-node.yaml``) and ZeRO-2 with LoRA
(``infra/accelerate/zero2-single-node.yaml`` + ``use_peft``); each row names the engine and ZeRO
stage the job itself reported, its peak GPU memory and tokens/s.

    python benchmarks/train_jobs.py [--group grpo|engines|all] [--steps 5] [--out DIR]

Without CUDA it runs toy sizes and says so (it proves the code path, not a speed).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RECIPES = ROOT / "configs" / "recipes" / "qwen2.5-7b-instruct"
VOCAB = 49152


def build_model(size: str, root: Path, vocab: int) -> Path:
    """A Qwen2.5-shaped model with random weights and a word-level tokenizer of ``vocab`` words."""
    import torch
    from train_throughput import qwen_config, tokenizer_dir
    from transformers import AutoModelForCausalLM

    d = root / f"qwen-{size}"
    tokenizer_dir(d, n_words=vocab)
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(d))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(qwen_config(size, n), dtype=torch.bfloat16).save_pretrained(d)
    return d


def rl_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of 10-300 words with a numeric gold answer (what the RL route holds)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(f"w{rng.randrange(1000)}" for _ in range(rng.randint(10, 300)))
        rows.append({"messages": [{"role": "user", "content": words}], "answer": str(i % 10), "answer_type": "numeric"})
    return rows


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    conv = lambda k, m: [{"role": "user", "content": " ".join(f"w{rng.randrange(1000)}" for _ in range(k))},
                         {"role": "assistant", "content": "<think> " + " ".join(f"w{rng.randrange(1000)}" for _ in range(m)) + " </think> \\boxed{ 1 }"}]
    return [{"conversation": conv(rng.randint(10, 200), rng.randint(50, 900))} for _ in range(n)]


def run_job(method: str, recipe: Path, data: str, out: Path, overrides: dict, accelerate_config: str | None = None) -> dict:
    from finr1_core.training.launch import TrainingFailed, train

    lines: list[str] = []
    t0 = time.perf_counter()
    try:
        res = train(method, str(recipe), data, str(out), num_processes=1, overrides=overrides, on_line=lines.append,
                    accelerate_config=accelerate_config)
    except TrainingFailed as e:
        tail = [ln for ln in lines if "rror" in ln][-3:]
        return {"error": str(e)[:300], "error_lines": tail, "wall_s": round(time.perf_counter() - t0, 1)}
    wall = time.perf_counter() - t0
    steps = [e for e in res["log_history"] if "loss" in e and "step" in e]  # one entry per step (logging_steps: 1)
    times = [float(t) for t in res.get("step_seconds") or []]  # the job's own wall seconds per optimizer step
    rest = times[1:] or times
    step_s = statistics.median(rest) if rest else None
    row = {"steps": res["steps"], "wall_s": round(wall, 1), "first_step_s": round(times[0], 2) if times else None,
           "step_s": round(step_s, 3) if step_s else None, "steps_per_s": round(1 / step_s, 3) if step_s else None,
           "compile_s": round(times[0] - step_s, 1) if times and step_s else None,
           "engine": res.get("engine"), "peak_memory_gib": res.get("peak_memory_gib"), "adapted": res.get("adapted"),
           "loss": [e.get("loss") for e in steps], "step_times": [round(t, 3) for t in times]}
    if method == "grpo":
        lens = [float(e["completions/mean_length"]) for e in steps if "completions/mean_length" in e]
        row["reward"] = [e.get("reward") for e in steps]
        row["reward_std"] = [e.get("reward_std") for e in steps]
        row["mean_completion_len"] = round(statistics.mean(lens), 1) if lens else None
        per_step = [float(e.get("completions/mean_length", 0)) * overrides["per_device_train_batch_size"] * overrides["gradient_accumulation_steps"]
                    / t for e, t in zip(steps[1:], times[1:])]
        row["gen_tok_s"] = round(statistics.median(per_step), 1) if per_step else None
    else:
        ntok = [float(e["num_tokens"]) for e in steps if "num_tokens" in e]  # cumulative tokens seen
        if len(ntok) >= 2 and len(times) >= len(ntok):
            row["tok_s"] = round((ntok[-1] - ntok[0]) / sum(times[1:len(ntok)]), 1)
    return row


def grpo_group(root: Path, size: str, steps: int, new_tokens: int, cuda: bool, log, liger_case: bool = True) -> list[dict]:
    from finr1_core.training.data import write_rows

    mdir = build_model(size, root, VOCAB if cuda else 1000)
    data = write_rows(rl_rows(64), str(root / "rl.parquet"))
    base = {"model_name_or_path": str(mdir), "max_steps": steps, "max_completion_length": new_tokens, "use_vllm": False,
            "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "num_generations": 8,
            "save_strategy": "no", "report_to": "none", "logging_steps": 1, "seed": 0,
            "generation_kwargs": {"exponential_decay_length_penalty": [32, 1.03]}}
    cases = [("generate (baseline)", {"generation_fallback": "generate"}),
             ("compiled (the recipe)", {"generation_fallback": "compiled"})]
    if cuda and liger_case:
        cases.append(("compiled, Liger layers forced on (before)", {"generation_fallback": "compiled", "use_liger_kernel": True}))
    rows = []
    for i, (label, ov) in enumerate(cases):
        r = {"group": "grpo", "size": size, "setting": label, **run_job("grpo", RECIPES / "grpo.yaml", data, root / f"grpo-{i}", {**base, **ov})}
        rows.append(r)
        log(r)
    b = rows[0].get("steps_per_s")
    for r in rows:
        r["vs_generate"] = round(r["steps_per_s"] / b, 2) if b and r.get("steps_per_s") else None
    return rows


def engines_group(root: Path, size: str, steps: int, cuda: bool, log) -> list[dict]:
    from finr1_core.training.data import write_rows

    mdir = build_model(size, root, VOCAB if cuda else 1000)
    sft_data = write_rows(sft_rows(256), str(root / "sft.parquet"))
    rl_data = write_rows(rl_rows(64), str(root / "rl.parquet"))
    acc = ROOT / "infra" / "accelerate"
    engines = [("plain accelerate (baseline)", None, {}),
               ("DeepSpeed ZeRO-3", str(acc / "zero3-single-node.yaml"), {}),
               ("DeepSpeed ZeRO-2 + LoRA", str(acc / "zero2-single-node.yaml"), {"use_peft": True, "lora_r": 16, "lora_alpha": 32,
                                                                                  "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})]
    common = {"model_name_or_path": str(mdir), "max_steps": steps, "save_strategy": "no", "report_to": "none", "logging_steps": 1, "seed": 0}
    sft = {**common, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 4096}
    grpo = {**common, "use_vllm": False, "generation_fallback": "compiled", "max_completion_length": 128, "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 4, "num_generations": 8, "generation_kwargs": {"exponential_decay_length_penalty": [32, 1.03]}}
    rows = []
    for method, ov, recipe, data in (("sft", sft, RECIPES / "sft.yaml", sft_data), ("grpo", grpo, RECIPES / "grpo.yaml", rl_data)):
        for i, (label, cfg, extra) in enumerate(engines):
            if cfg and not cuda:
                continue  # DeepSpeed needs CUDA here
            r = {"group": "engines", "method": method, "size": size, "setting": label,
                 **run_job(method, recipe, data, root / f"{method}-eng{i}", {**ov, **extra}, accelerate_config=cfg)}
            rows.append(r)
            log(r)
        base = next((r for r in rows if r.get("method") == method and "baseline" in r["setting"]), {})
        for r in rows:
            if r.get("method") == method and base.get("steps_per_s") and r.get("steps_per_s"):
                r["vs_plain"] = round(r["steps_per_s"] / base["steps_per_s"], 2)
    return rows


def _engine(e: dict | None) -> str:
    if not e:
        return "-"
    s = e.get("distributed_type", "?")
    if "zero_stage" in e:
        s += f" ZeRO-{e['zero_stage']}"
    if "params_on_this_rank" in e and e.get("params_total"):
        s += f", {e['params_on_this_rank'] / 1e6:.0f}M of {e['params_total'] / 1e6:.0f}M params on the rank"
    return s


def table(rows: list[dict], device: str) -> str:
    out = [f"Device: {device}", ""]
    g = [r for r in rows if r["group"] == "grpo"]
    if g:
        out += ["| GRPO job, vLLM off | s/step (median, after the first) | steps/s | vs generate | generated tok/s | first step s (compile) "
                "| mean completion len | reward (mean of steps) | loss (mean of steps) | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in g:
            if r.get("error"):
                out.append(f"| {r['setting']} | error: {r['error'][:160]} | | | | | | | | |")
                continue
            rew = [x for x in r.get("reward", []) if x is not None]
            loss = [x for x in r.get("loss", []) if x is not None]
            out.append(f"| {r['setting']} | {r['step_s']} | {r['steps_per_s']} | {r['vs_generate']}x | {r['gen_tok_s']:,.0f} | {r['first_step_s']} "
                       f"({r['compile_s']}) | {r['mean_completion_len']} | {statistics.mean(rew) if rew else 0:.4f} | "
                       f"{statistics.mean(loss) if loss else 0:.4g} | {r['peak_memory_gib']} |")
    e = [r for r in rows if r["group"] == "engines"]
    if e:
        out += ["", "| Job | Engine (as the job reported it) | s/step | vs plain | tok/s (SFT) | peak GiB | steps |", "|---|---|---|---|---|---|---|"]
        for r in e:
            if r.get("error"):
                out.append(f"| {r['method']} {r['setting']} | error: {r['error'][:160]} | | | | | |")
                continue
            out.append(f"| {r['method']} {r['setting']} | {_engine(r.get('engine'))} | {r['step_s']} | {r.get('vs_plain', '-')}x | "
                       f"{r.get('tok_s', '-')} | {r['peak_memory_gib']} | {r['steps']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", default="grpo", choices=["grpo", "engines", "all"])
    ap.add_argument("--size", default="0.5b")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--no-liger-case", action="store_true", help="skip the GRPO case with Liger's layer kernels forced on")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "CPU (toy sizes; proves the code path, not a speed)"
    size, steps, new_tokens = (a.size, a.steps, a.new_tokens) if cuda else ("toy", 2, 16)
    log = lambda r: print(json.dumps(r, default=str), flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.group in ("grpo", "all"):
            rows += grpo_group(Path(tmp) / "g", size, steps, new_tokens, cuda, log, not a.no_liger_case)
        if a.group in ("engines", "all"):
            rows += engines_group(Path(tmp) / "e", size, steps, cuda, log)
    md = table(rows, device)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train_jobs_{a.group}" + ("_h200" if cuda and "H200" in device else "" if cuda else "_cpu_toy")
    (out / f"{stem}.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=2, default=str))
    (out / f"{stem}.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
