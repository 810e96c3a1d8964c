"""Where a training step spends its time: phase timers and the CUDA kernel table of one step.

Diagnostics for ``benchmarks/train_jobs.py`` (GRPO) and ``benchmarks/train_throughput.py`` (SFT),
run in one process on the same recipes, models and rows as those benchmarks:

``grpo``: the production GRPO recipe (vLLM off, ``generation_fallback`` as given) built by
:func:`finr1_core.training.grpo.build_grpo_trainer`; each optimizer step is split into generation
(prefill and decode, with the number of decode steps), rewards, the training forward/backward and the
optimizer, every phase timed between CUDA synchronizations. Also counts dynamo recompiles and
cudagraph skips.

``sft``: the plain dense loop and the SFT recipe (as ``train_throughput.py`` runs them) at one size,
with ``torch.profiler`` over ``--prof-steps`` steps after warm-up: the busiest kernels and how much
of the wall time the GPU was busy.

    python benchmarks/train_profile.py grpo [--fallback compiled] [--steps 5]
    python benchmarks/train_profile.py sft [--size 1.5b] [--variants recipe,noliger]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Phases:
    """Wall seconds of named phases (CUDA-synchronized), grouped per optimizer step."""

    def __init__(self):
        self.cur = collections.defaultdict(float)
        self.counts = collections.defaultdict(int)
        self.steps: list[dict] = []

    def wrap(self, obj, name: str, label: str | None = None, after=None):
        fn = getattr(obj, name)
        label = label or name

        def timed(*a, **kw):
            sync()
            t = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            self.cur[label] += time.perf_counter() - t
            self.counts[label] += 1
            if after:
                after(self, out)
            return out

        setattr(obj, name, timed)

    def close_step(self, total: float):
        row = {k: round(v, 4) for k, v in self.cur.items()}
        row["step_total"] = round(total, 4)
        row.update({f"n_{k}": v for k, v in self.counts.items()})
        self.steps.append(row)
        self.cur.clear()
        self.counts.clear()


def _value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def kernel_table(prof, n=25) -> tuple[str, float]:
    """Top kernels by CUDA time, and the summed device time (seconds)."""
    ev = prof.key_averages()
    total = sum(e.self_device_time_total for e in ev) / 1e6
    return ev.table(sort_by="self_device_time_total", row_limit=n, max_name_column_width=90), total


def idle_report(prof, min_gap_us: float = 100.0, sample_us: float = 100.0, top: int = 30) -> dict:
    """Where the GPU sat idle: gaps of ``min_gap_us`` or more between kernels, and what the host was
    doing in them (the innermost op or Python frame, plus its two callers, sampled every ``sample_us``)."""
    import bisect

    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    ev = json.loads(path.read_text())["traceEvents"]
    path.unlink()
    kern = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e), key=lambda e: e["ts"])
    if not kern:
        return {}
    host = sorted((e for e in ev if e.get("cat") in ("cpu_op", "python_function", "user_annotation", "cuda_runtime") and "dur" in e),
                  key=lambda e: e["ts"])
    starts = [e["ts"] for e in host]
    gaps, end = [], kern[0]["ts"] + kern[0]["dur"]
    for k in kern[1:]:
        if k["ts"] - end >= min_gap_us:
            gaps.append((end, k["ts"]))
        end = max(end, k["ts"] + k["dur"])
    span = end - kern[0]["ts"]
    busy = sum(k["dur"] for k in kern)
    where = collections.Counter()
    for a0, b0 in gaps:
        t = a0 + sample_us / 2
        while t < b0:
            i = bisect.bisect_right(starts, t) - 1
            chain = []
            j = i
            while j >= 0 and len(chain) < 3 and i - j < 500:
                e = host[j]
                if e["ts"] + e["dur"] > t:
                    chain.append(e["name"][:90])
                j -= 1
            where[" < ".join(chain) or "(no host event)"] += sample_us / 1000
            t += sample_us
    return {"span_ms": round(span / 1000, 1), "kernel_busy_ms": round(busy / 1000, 1), "gaps": len(gaps),
            "idle_in_gaps_ms": round(sum(b - a for a, b in gaps) / 1000, 1),
            "largest_gaps_ms": sorted((round((b - a) / 1000, 2) for a, b in gaps), reverse=True)[:15],
            "host_during_idle_ms": [(k, round(v, 2)) for k, v in where.most_common(top)]}


def grpo(a) -> dict:
    import torch
    from train_jobs import RECIPES, VOCAB, build_model, rl_rows
    from transformers import TrainerCallback

    from finr1_core.training.grpo import build_grpo_trainer
    from finr1_core.training.recipes import load_recipe

    torch._dynamo.utils.counters.clear()
    root = Path(tempfile.mkdtemp())
    mdir = build_model(a.size, root, VOCAB)
    ov = {"model_name_or_path": str(mdir), "max_steps": a.steps, "max_completion_length": a.new_tokens, "use_vllm": False,
          "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "num_generations": 8,
          "save_strategy": "no", "report_to": "none", "logging_steps": 1, "seed": 0,
          "generation_kwargs": {"exponential_decay_length_penalty": [32, 1.03]}, "generation_fallback": a.fallback}
    for kv in a.set:
        k, v = kv.split("=", 1)
        ov[k] = _value(v)
    recipe = load_recipe("grpo", RECIPES / "grpo.yaml", ov, output_dir=str(root / "out"))
    print("adapted:", recipe.notes, flush=True)
    tr, tok, _ = build_grpo_trainer(recipe, rl_rows(64))
    off = set(filter(None, a.without.split(",")))
    if "hooks" in off:
        tr.remove_input_grad_hooks = False
    if "deferred" in off:
        tr.defer_stop_check = False
    if "cudnn" in off:
        torch.backends.cuda.enable_cudnn_sdp(True)
    print("generation class:", type(tr).__mro__[1].__name__, "attention:", tr.model.config._attn_implementation,
          "cudnn sdp:", torch.backends.cuda.cudnn_sdp_enabled(), "without:", sorted(off), flush=True)
    ph = Phases()
    lens = []

    def gen_after(p, out):
        ids = out[0]
        lens.append(max(len(c) for c in ids))
        p.cur["decode_steps"] += max(len(c) for c in ids)
        p.cur["completion_tokens"] += sum(len(c) for c in ids)

    ph.wrap(tr, "_generate_single_turn", "generate", after=gen_after)
    ph.wrap(tr, "_calculate_rewards", "rewards")
    ph.wrap(tr, "_generate_and_score_completions", "gen_and_score")
    ph.wrap(tr, "training_step", "train_fwd_bwd")
    model_cls = type(tr.model)
    orig_prefill = model_cls._prefill

    def prefill(self, *x, **kw):
        sync()
        t = time.perf_counter()
        out = orig_prefill(self, *x, **kw)
        sync()
        ph.cur["prefill"] += time.perf_counter() - t
        return out

    model_cls._prefill = prefill
    prof_box = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()
            if state.global_step == a.prof_step and a.prof_step >= 0:
                prof_box["p"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                                                       with_stack=a.stack)
                prof_box["p"].__enter__()

        def on_step_end(self, args, state, control, **kw):
            sync()
            if "p" in prof_box and "done" not in prof_box:
                prof_box["p"].__exit__(None, None, None)
                prof_box["done"] = True
            ph.close_step(time.perf_counter() - self.t)

    # GRPO generates at the first micro-batch of each optimizer step: inside on_step_begin/on_step_end
    tr.add_callback(StepTimer())
    tr.train()
    c = torch._dynamo.utils.counters
    res = {"fallback": a.fallback, "steps": ph.steps, "max_completion_per_step": lens,
           "dynamo": {k: dict(v) for k, v in c.items() if k in ("stats", "recompiles", "inductor", "graph_break")}}
    for s in ph.steps:
        s["other"] = round(s["step_total"] - s.get("gen_and_score", 0) - s.get("train_fwd_bwd", 0), 4)
        if s.get("decode_steps"):
            s["ms_per_decode_step"] = round(1000 * (s.get("generate", 0) - s.get("prefill", 0)) / s["decode_steps"], 3)
    if "p" in prof_box:
        res["kernels"], res["device_s"] = kernel_table(prof_box["p"], 30)
        res["cpu_table"] = prof_box["p"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
        res["idle"] = idle_report(prof_box["p"])
    return res


def sft(a) -> dict:
    import torch
    from train_throughput import model_dir, plain_loop, sft_path

    root = Path(tempfile.mkdtemp())
    vocab, seq = 151936, 4096
    batch = a.batch or (4 if a.size == "0.5b" else 2)
    mdir = model_dir(a.size, vocab, root)
    out = {}
    for v in a.variants.split(","):
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                                      schedule=torch.profiler.schedule(wait=0, warmup=a.warmup, active=a.prof_steps, repeat=1),
                                      with_stack=a.stack)
        t0 = time.perf_counter()
        if v == "plain":
            r = plain_loop(a.size, vocab, batch, seq, a.steps, a.warmup, True, profiler=prof)
        else:
            liger = "noliger" not in v
            attn = "sdpa" if "sdpa" in v else "flex_attention" if "flex" in v else "auto"
            extra = {}
            for kv in v.split("+")[1:]:
                k, val = kv.split("=", 1)
                extra[k] = _value(val)
            r = sft_path(a.size, mdir, batch, seq, a.steps, a.warmup, True, attn, liger, root, profiler=prof, extra=extra)
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        r["kernels"], _ = kernel_table(prof)
        r["idle"] = idle_report(prof)
        r["cpu_table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60)
        print(json.dumps({k: x for k, x in r.items() if k not in ("kernels", "idle", "cpu_table")}, default=str), flush=True)
        print(json.dumps(r["idle"]), flush=True)
        print(r["cpu_table"], flush=True)
        out[v] = r
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["grpo", "sft"])
    ap.add_argument("--size", default=None)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prof-steps", type=int, default=2)
    ap.add_argument("--prof-step", type=int, default=3, help="GRPO: the optimizer step profiled with torch.profiler (-1: none)")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--fallback", default="compiled")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="GRPO recipe override")
    ap.add_argument("--without", default="", help="GRPO: comma list of the compiled path's fixes to leave out: hooks, deferred, cudnn "
                    "(the GQA decode attention: --set attn_implementation=sdpa)")
    ap.add_argument("--stack", action="store_true", help="record Python stacks (for the idle-GPU report)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--variants", default="plain,recipe,noliger",
                    help="SFT: plain, recipe, noliger, sdpa, flex; +key=value recipe overrides")
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    a = ap.parse_args(argv)
    a.size = a.size or ("0.5b" if a.what == "grpo" else "1.5b")
    res = grpo(a) if a.what == "grpo" else sft(a)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    tag = f"{a.what}_{a.size}" + (f"_{a.fallback}" if a.what == "grpo" else "") + (f"_{a.tag}" if a.tag else "")
    (Path(a.out) / f"train_profile_{tag}.json").write_text(json.dumps(res, indent=2, default=str))
    if a.what == "grpo":
        for s in res["steps"]:
            print(json.dumps(s), flush=True)
        print(json.dumps(res["dynamo"], default=str)[:3000], flush=True)
        if res.get("idle"):
            print(res["kernels"], flush=True)
            print(json.dumps(res["idle"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
