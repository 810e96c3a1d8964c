"""Training throughput: a plain dense bf16 loop against the project's SFT path, and GRPO generation.

- Qwen2.5-shaped models (0.5B, 1.5B) built from config with random weights: no hub.
- Plain loop: full 4,096-token rows, bf16 weights, SDPA, fused AdamW.
- Project SFT path: the production recipe (configs/recipes/qwen2.5-7b-instruct/sft.yaml, adapted to
  the machine by finr1's loader) run by TRL's SFTTrainer on rows whose lengths follow a long-tailed
  distribution (log-normal, median about 1k tokens, at most 4,096) at the same token count per step.
  Variants: attention backend (flex / sdpa) and Liger on / off, interleaved with the baseline.
- MFU = 6 N x real (non-pad) tokens/s over 989 TFLOP/s (bf16 dense peak of an H100/H200 SXM).
- GRPO generation tokens/s at 0.5B, 512-token completions: today's path (fp32 weights, 8 completions
  per generate call) against the new one (bf16 weights, the recipe's generation batch of 64).

On a machine without CUDA it runs toy sizes and says so. Prints a table; writes JSON and Markdown to
benchmarks/results/ (or --out).

    python benchmarks/train_throughput.py [--sizes 0.5b,1.5b] [--steps 12] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_TFLOPS = 989.0
SEQ = 4096
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "toy": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def qwen_config(size: str, vocab: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
                       rms_norm_eps=1e-6, **SHAPES[size])


def tokenizer_dir(path: Path, n_words: int = 200) -> Path:
    """A word-level tokenizer (``n_words`` words w0, w1, ...) with a ChatML template (pad/eos only matter: rows are token ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|im_end|>", "<|im_start|>", "<think>", "</think>", "user", "assistant", "system"]
    words += [f"w{i}" for i in range(n_words)] + list("0123456789") + ["\\boxed{", "}", "\n"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    tok.save_pretrained(path)
    return path


def model_dir(size: str, vocab: int, root: Path, dtype="bfloat16") -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    d = root / f"qwen-{size}"
    if not (d / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            m = AutoModelForCausalLM.from_config(qwen_config(size, vocab), dtype=getattr(torch, dtype))
        m.save_pretrained(d)
        tokenizer_dir(d)
    return d


def n_params(size: str, vocab: int) -> int:
    s = SHAPES[size]
    h, i, L = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return L * per_layer + vocab * h


def mfu(tok_s: float, n: int) -> float:
    return 6 * n * tok_s / (PEAK_TFLOPS * 1e12)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(size, vocab, batch, seq, steps, warmup, cuda, profiler=None) -> dict:
    """Dense bf16 baseline: full rows, SDPA, fused AdamW. ``profiler``: a ``torch.profiler`` stepped once a step."""
    import torch
    from transformers import AutoModelForCausalLM

    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):  # initialised on the device: a 1.5B CPU init took about a minute a run
        model = AutoModelForCausalLM.from_config(qwen_config(size, vocab), dtype=dtype, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    x = torch.randint(0, vocab, (batch, seq), device=dev)
    times = []
    if profiler is not None:
        profiler.start()
    for i in range(warmup + steps):
        sync()
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
        if profiler is not None:
            profiler.step()
    if profiler is not None:
        profiler.stop()
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    med = sorted(times)[len(times) // 2]
    return {"tok_s": batch * seq / med, "tokens_per_step": batch * seq, "step_s": med}


def plain_loop_isolated(size, vocab, batch, seq, steps, warmup, cuda) -> dict:
    """:func:`plain_loop` in a fresh process. Liger's Qwen2 patch, applied when an SFT run loads its
    model with ``use_liger_kernel``, replaces transformers' Qwen2 RMSNorm, SwiGLU and RoPE for the whole
    process: a plain loop run after it in the same process is a Liger loop (H200, 1.5B, 4 x 4,096:
    37.2k tok/s before the patch, 46.9k after)."""
    import subprocess

    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from train_throughput import plain_loop; "
            "print('RESULT ' + json.dumps(plain_loop(sys.argv[2], *map(int, sys.argv[3:9]))))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), size, str(vocab), str(batch),
                          str(seq), str(steps), str(warmup), str(int(cuda))], capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def long_tailed_lengths(n: int, seq: int, seed: int = 0, median: int = 1000) -> list[int]:
    import random

    rng = random.Random(seed)
    return [max(64, min(seq, int(math.exp(rng.gauss(math.log(median), 0.9))))) for _ in range(n)]


def sft_path(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, work: Path, profiler=None, extra: dict | None = None,
             pack: int = 0) -> dict:
    """The project's SFT path: production recipe, adapted to this machine, bfd packing (padding-free),
    run by finr1's trainer class (``finr1_core.training.sft.sft_trainer_class``). ``pack``: rows
    packed to this many tokens (the production recipe's ``max_length`` is 16,384), ``batch x seq / pack``
    of them a step, so the tokens per step stay the plain loop's; default ``seq``."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from finr1_core.config import REPO_ROOT
    from finr1_core.training.recipes import load_recipe
    from finr1_core.training.sft import sft_trainer_class

    total = (warmup + steps + 2) * batch * seq * 1.15
    lengths, acc = [], 0
    for n in long_tailed_lengths(100000, seq):
        if acc >= total:
            break
        lengths.append(n)
        acc += n
    tok = AutoTokenizer.from_pretrained(mdir)
    vocab = len(tok)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    pack = pack or seq
    rows_per_step = max(1, batch * seq // pack)
    ov = {"model_name_or_path": str(mdir), "max_steps": warmup + steps, "per_device_train_batch_size": rows_per_step,
          "gradient_accumulation_steps": 1, "max_length": pack, "gradient_checkpointing": False, "save_strategy": "no",
          "report_to": "none", "logging_steps": 1000, "completion_only_loss": False, "dataloader_num_workers": 0,
          "attn_implementation": attn, "use_liger_kernel": liger, "lr_scheduler_type": "constant", "num_train_epochs": 1,
          **(extra or {})}
    recipe = load_recipe("sft", REPO_ROOT / "configs/recipes/qwen2.5-7b-instruct/sft.yaml", ov, output_dir=str(work / "sft-out"))
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)
            if profiler is not None:
                profiler.step()

        def on_train_begin(self, args, state, control, **kw):
            if profiler is not None:
                profiler.start()

        def on_train_end(self, args, state, control, **kw):
            if profiler is not None:
                profiler.stop()

    tr = sft_trainer_class(recipe, tok)(model=str(mdir), args=recipe.args, train_dataset=Dataset.from_dict({"input_ids": rows}),
                    processing_class=tok, callbacks=[Timer()])
    packed = tr.train_dataset
    per_row = sum(len(r) for r in packed["input_ids"]) / len(packed)
    tr.train()
    meas = times[warmup:]
    med = sorted(meas)[len(meas) // 2]
    del tr
    if cuda:
        torch.cuda.empty_cache()
    return {"tok_s": rows_per_step * per_row / med, "tokens_per_step": rows_per_step * per_row, "step_s": med,
            "packed_length": pack, "rows": len(rows),
            "median_row_len": sorted(lengths)[len(lengths) // 2], "notes": recipe.notes}


def generation(size, vocab, batch, new_tokens, cuda, weights: str, reps=1, compiled=False) -> dict:
    """Generated tokens/s of one generate call over ``batch`` completions (what a GRPO step does).
    ``compiled``: a static KV cache, so transformers compiles the decode step (CUDA graphs)."""
    import torch
    from transformers import AutoModelForCausalLM

    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if (weights == "bf16" and cuda) else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen_config(size, vocab), dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    prompt = torch.randint(3, vocab, (batch, 128), device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and weights == "fp32+amp") else torch.autocast("cpu", enabled=False)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, pad_token_id=0)
    if compiled:
        kw["cache_implementation"] = "static"
    with torch.no_grad(), amp:
        t0 = time.perf_counter()
        # warm-up; a compiled decode is compiled for this cache length, so it warms up at full length
        model.generate(prompt, **(kw if compiled else {**kw, "max_new_tokens": 8, "min_new_tokens": 8}))
        warm = time.perf_counter() - t0
        best = 0.0
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            out = model.generate(prompt, **kw)
            sync()
            best = max(best, batch * (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t))
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"tok_s": best, "completions": batch, "new_tokens": new_tokens, "warmup_s": round(warm, 1)}


def sft_variants(cuda: bool, quick: bool = False) -> list[tuple[str, str, bool]]:
    """(label, attention, liger) for the project's SFT path; the first is what the recipe picks."""
    from finr1_core.training.device import has, pick_attention

    if not cuda:
        return [("sft recipe (sdpa, bfd)", "auto", False)]
    auto = pick_attention(True, packed=True)
    out = [(f"sft recipe ({auto}, bfd, liger)", "auto", True), (f"sft {auto}, bfd, no liger", "auto", False)]
    if auto != "flex_attention":
        out.append(("sft flex_attention, bfd, liger", "flex_attention", True))
    if not quick:
        out.append(("sft sdpa, bfd, liger", "sdpa", True))
    return out if has("liger_kernel") else [o for o in out if not o[2]]


SFT_SET: dict = {}  # --set KEY=JSON: recipe overrides for every SFT run


def _sft_row(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, root, pack=0) -> dict:
    try:
        return sft_path(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, root, pack=pack, extra=SFT_SET)
    except Exception as e:  # one failing variant must not lose the others
        return {"tok_s": 0.0, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def run_size(size, vocab, batch, steps, warmup, seq, cuda, root: Path, log, quick=False) -> list[dict]:
    n = n_params(size, vocab)
    mdir = model_dir(size, vocab, root)
    rows = []
    base = plain_loop_isolated(size, vocab, batch, seq, steps, warmup, cuda)  # fresh processes: Liger's patch is process-wide
    rows.append({"size": size, "setting": f"plain dense loop, full {seq} rows (start)", **base})
    log(rows[-1])
    variants = sft_variants(cuda, quick)
    # the recipe's own backend between the two baselines; other backends (slow first compiles) after
    mine = [v for v in variants if v[1] == "auto"]
    for label, attn, liger in mine:
        rows.append({"size": size, "setting": label, **_sft_row(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, root)})
        log(rows[-1])
    end = plain_loop_isolated(size, vocab, batch, seq, steps, warmup, cuda)
    rows.append({"size": size, "setting": f"plain dense loop, full {seq} rows (end)", **end})
    log(rows[-1])
    for label, attn, liger in variants[len(mine):]:
        rows.append({"size": size, "setting": label, **_sft_row(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, root)})
        log(rows[-1])
    plain = (base["tok_s"] + end["tok_s"]) / 2
    for r in rows:
        r["mfu"] = mfu(r["tok_s"], n)
        r["vs_plain"] = r["tok_s"] / plain if plain else None
        r["params"] = n
    return rows


def run_interleaved(size, vocab, batch, steps, warmup, seq, cuda, root: Path, log, rounds: int = 2,
                    pack: int = 0) -> list[dict]:
    """plain, SFT recipe, plain, SFT recipe, ..., plain: the baseline on both sides of every SFT
    measurement, so clock drift shows; each SFT row is compared with the mean of its two neighbours.
    Every plain run is a fresh process (:func:`plain_loop_isolated`)."""
    n = n_params(size, vocab)
    mdir = model_dir(size, vocab, root)
    label, attn, liger = sft_variants(cuda, quick=True)[0]
    rows = []
    for i in range(2 * rounds + 1):
        if i % 2 == 0:
            r = {"size": size, "setting": f"plain dense loop, full {seq} rows (#{i // 2 + 1})",
                 **plain_loop_isolated(size, vocab, batch, seq, steps, warmup, cuda)}
        else:
            name = label
            if pack and pack != seq:
                name = name.replace(", bfd", f", bfd to {pack} tokens")
            r = {"size": size, "setting": f"{name} (#{i // 2 + 1})",
                 **_sft_row(size, mdir, batch, seq, steps, warmup, cuda, attn, liger, root, pack=pack)}
        rows.append(r)
        log(r)
    for i, r in enumerate(rows):
        r["mfu"] = mfu(r["tok_s"], n)
        r["params"] = n
        if i % 2 == 1:
            r["vs_plain"] = r["tok_s"] / ((rows[i - 1]["tok_s"] + rows[i + 1]["tok_s"]) / 2)
        else:
            r["vs_plain"] = 1.0
    return rows


def run_generation(size, vocab, cuda, new_tokens, log) -> list[dict]:
    """Today's path, then the project's GRPO generation without vLLM (``generation_fallback: compiled``:
    bf16, static cache, compiled decode) at the production recipe's generation batch (8 x 4 = 32) and 64."""
    cases = [("today: fp32 weights (+bf16 autocast), 8 completions", "fp32+amp", 8, False),
             ("bf16 weights, 64 completions, dynamic cache", "bf16", 64, False),
             ("new: bf16, static cache + compiled decode, 32 completions", "bf16", 32, True),
             ("new: bf16, static cache + compiled decode, 64 completions", "bf16", 64, True)]
    if not cuda:
        cases = cases[:2]  # no compiled decode on a CPU
    rows = []
    for label, w, b, comp in cases:
        try:
            r = generation(size, vocab, b, new_tokens, cuda, w, compiled=comp)
        except Exception as e:  # one failing case must not lose the others
            r = {"tok_s": 0.0, "new_tokens": new_tokens, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        rows.append({"size": size, "setting": label, **r})
        log(rows[-1])
    for r in rows:
        r["vs_today"] = r["tok_s"] / rows[0]["tok_s"] if rows[0]["tok_s"] else 0.0
    return rows


def table(train_rows: list[dict], gen_rows: list[dict], device: str) -> str:
    lines = [f"Device: {device}", "", "| Size | Setting | real tok/s | 6N-MFU | vs plain |", "|---|---|---|---|---|"]
    for r in train_rows:
        err = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['size']} | {r['setting']}{err} | {r['tok_s']:,.0f} | {r['mfu']:.1%} | {r['vs_plain']:.2f}x |")
    lines += ["", "| Size | GRPO generation | generated tok/s | vs today |", "|---|---|---|---|"]
    for r in gen_rows:
        err = f" ({r['error']})" if r.get("error") else ""
        lines.append(f"| {r['size']} | {r['setting']}{err} ({r['new_tokens']} new tokens) | {r['tok_s']:,.0f} | {r['vs_today']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5b,1.5b")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="rows of 4096 per step (default: 4 at 0.5B, 2 at 1.5B)")
    ap.add_argument("--gen-tokens", type=int, default=512)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-train", action="store_true", help="only the GRPO generation figures")
    ap.add_argument("--gen-size", default=None, help="model size for the GRPO generation figures (default: the first size)")
    ap.add_argument("--quick", action="store_true", help="only the recipe's SFT variant and its no-Liger twin")
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="plain, SFT recipe, plain, ... (ROUNDS SFT runs between ROUNDS+1 baselines); each SFT row against its two neighbours")
    ap.add_argument("--pack", type=int, default=0, metavar="TOKENS",
                    help="with --interleave: SFT rows packed to TOKENS (the production recipe: 16384), as many a step as keep "
                         "the plain loop's tokens per step (default: one 4096-token row per plain row)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="an SFT recipe override for every SFT run, e.g. dataloader_num_workers=4 (the recipe's own; default 0)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    for kv in a.set:
        k, v = kv.split("=", 1)
        SFT_SET[k] = json.loads(v)
    cuda = torch.cuda.is_available()
    vocab, seq, sizes = 151936, SEQ, a.sizes.split(",")
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    if not cuda:
        print("No CUDA device: running TOY sizes on the CPU (figures prove the code runs, not its speed).")
        vocab, seq, sizes, a.steps, a.warmup, a.gen_tokens = 1000, 256, ["toy"], 3, 1, 16
        device = "CPU (toy sizes: hidden 64, 2 layers, 256-token rows; not a speed measurement)"
    log = lambda r: print(json.dumps({k: v for k, v in r.items() if k != "notes"}, default=str), flush=True)
    train_rows, gen_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [] if a.skip_train else sizes:
            batch = a.batch or (4 if size in ("0.5b", "toy") else 2)
            if a.interleave:
                train_rows += run_interleaved(size, vocab, batch, a.steps, a.warmup, seq, cuda, Path(tmp), log, a.interleave, a.pack)
            else:
                train_rows += run_size(size, vocab, batch, a.steps, a.warmup, seq, cuda, Path(tmp), log, a.quick)
    if not a.skip_generation:
        gen_rows = run_generation(a.gen_size if cuda and a.gen_size else sizes[0], vocab, cuda, a.gen_tokens, log)
    md = table(train_rows, gen_rows, device)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "train_throughput" + ("" if cuda else "_cpu_toy") + ("_" + "_".join(sizes) if cuda else "") + ("_interleaved" if a.interleave else "")
    (out / f"{stem}.json").write_text(json.dumps({"device": device, "peak_tflops": PEAK_TFLOPS, "train": train_rows,
                                                   "generation": gen_rows, "torch": torch.__version__}, indent=2, default=str))
    (out / f"{stem}.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
