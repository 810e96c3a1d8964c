"""Does finr1's GRPO make the embedded model better? TFNS sentiment, base against trained, held-out rows.

Only finr1's own code paths and commands:

1. the TFNS loader (``finr1_core.sources.load_source("tfns", ...)``) reads ``--data`` (training rows;
   default: the loader's hub id) and ``--eval-data`` (held-out rows; default: the same data). A seeded
   sample of ``--eval-rows`` rows of ``--eval-data`` is held out; every training row whose tweet text
   is among them is left out of training;
2. ``finr1 eval`` scores the base model on the held-out rows (rules only, greedy, the recipe's
   prefix and completion length);
3. ``finr1 train grpo --recipe configs/recipes/smollm2-135m/grpo-tfns.yaml`` trains on the rest
   (prompts built by ``finr1_core.prompts.build_prompt``, as the eval builds them);
4. ``finr1 eval`` scores the trained checkpoint on the same rows the same way.

It writes ``--report`` (default ``benchmarks/results/grpo_learning.md``) with accuracy and its 95%
Wilson interval, macro-F1, the confusion matrices, the majority-class baseline, the reward and
accuracy curves (PNG beside the report) and the minutes taken.

    python benchmarks/grpo_learning.py --data PATH --eval-data PATH [--eval-rows 300] [--minutes 30] [--max-steps N]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = "configs/recipes/smollm2-135m/grpo-tfns.yaml"
LABELS = ("Bearish", "Bullish", "Neutral")
COMMANDS: list[str] = []


def finr1(*args: str, log: Path) -> None:
    exe = Path(sys.executable).with_name("finr1")
    cmd = [str(exe) if exe.exists() else "finr1", *args]
    shown = "finr1 " + " ".join("''" if a == "" else a for a in args)
    print("$ " + shown, flush=True)
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    if rc != 0:
        sys.exit(f"grpo_learning: {' '.join(args[:2])} failed (exit {rc}); see {log}")


def load(name_or_path: str | None, split: str) -> list[dict]:
    from finr1_core.sources import SOURCES, load_source

    hub = name_or_path in (None, SOURCES["tfns"].hub_id)
    res = load_source("tfns", path=None if hub else name_or_path, hub_id=SOURCES["tfns"].hub_id if hub else None,
                      split=split if hub else None)
    if not res.records:
        sys.exit(f"grpo_learning: no TFNS rows in {name_or_path} ({len(res.quarantine)} quarantined)")
    return res.records


def tweet(record: dict) -> str:
    return record["question"].split("Tweet: ", 1)[-1]


def split_rows(train: list[dict], held: list[dict], n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training records, held-out records): a seeded sample of ``held``; no held-out tweet is trained on."""
    rng = random.Random(seed)
    held = rng.sample(held, min(n_eval, len(held)))
    texts = {tweet(r) for r in held}
    return [r for r in train if tweet(r) not in texts], held


def confusion(rows: list[dict]) -> dict[str, dict[str, int]]:
    """gold -> predicted label (``none``: no label read from the answer) -> count."""
    from finr1_core.verify import parse_label

    canon = {parse_label(c): c for c in LABELS}  # the verifier's label names (positive, ...) -> TFNS's
    m = {g: {p: 0 for p in (*LABELS, "none")} for g in LABELS}
    for r in rows:  # the verifier reports the label it read (correct/incorrect); an unreadable answer is "unknown"
        p = canon.get(parse_label(str(r["extracted"]))) if r.get("extracted") and r["verdict"] != "unknown" else None
        m[r["gold"]][p or "none"] += 1
    return m


def macro_f1(m: dict[str, dict[str, int]]) -> float:
    f1s = []
    for c in LABELS:
        tp = m[c][c]
        fp = sum(m[g][c] for g in LABELS if g != c)
        fn = sum(v for p, v in m[c].items() if p != c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def eval_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "results.parquet").to_pylist()


def summary(rows: list[dict]) -> dict:
    from finr1_core.eval.stats import wilson_ci

    k, n = sum(bool(r["correct"]) for r in rows), len(rows)
    m = confusion(rows)
    return {"n": n, "correct": k, "acc": k / n, "ci": wilson_ci(k, n), "macro_f1": macro_f1(m), "confusion": m}


def plot(log_history: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e for e in log_history if "reward" in e and "step" in e]
    xs = [e["step"] for e in steps]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    panels = ((axes[0], lambda e: float(e["reward"]), "mean reward (= training accuracy)"),
              (axes[1], lambda e: 1 - float(e.get("frac_reward_zero_std", 1.0)), "groups with a reward spread (fraction)"))
    for ax, value, label in panels:
        ys = [value(e) for e in steps]
        ax.plot(xs, ys, marker="o", ms=2, alpha=0.4, label="per step")
        w = max(1, len(ys) // 10)
        if len(ys) >= w:
            avg = [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, avg, lw=2, label=f"moving mean ({w} steps)")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def table_md(m: dict[str, dict[str, int]]) -> str:
    head = "| gold \\ predicted | " + " | ".join((*LABELS, "no label")) + " |\n|---|" + "---:|" * 4 + "\n"
    return head + "".join(f"| {g} | " + " | ".join(str(m[g][p]) for p in (*LABELS, "none")) + " |\n" for g in LABELS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="TFNS training rows: a file/folder the tfns loader reads, or a hub id (default: the loader's)")
    ap.add_argument("--eval-data", default=None, help="TFNS rows to hold out from (default: --data; its validation split for the hub id)")
    ap.add_argument("--eval-rows", type=int, default=300, help="Held-out rows (a seeded sample)")
    ap.add_argument("--train-rows", type=int, default=None, help="Cap on training rows (default: all that remain)")
    ap.add_argument("--minutes", type=float, default=30.0, help="Training budget in minutes (the recipe's max_minutes)")
    ap.add_argument("--max-steps", type=int, default=None, help="Training steps cap (default: the recipe's)")
    ap.add_argument("--recipe", default=RECIPE)
    ap.add_argument("--set", action="append", default=[], help="More recipe overrides, key=value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--balance", action="store_true", help="Train on equally many rows of each label (the rarest label's count): "
                    "with the natural mix (two thirds Neutral) the accuracy reward pays most for always answering Neutral")
    ap.add_argument("--server", default="vllm", choices=("vllm", "transformers"), help="What serves the checkpoints for `finr1 eval`")
    ap.add_argument("--concurrency", type=int, default=8, help="`finr1 eval` requests in flight")
    ap.add_argument("--work", default=None, help="Working folder (default: a new one under /tmp)")
    ap.add_argument("--report", default=str(ROOT / "benchmarks" / "results" / "grpo_learning.md"))
    ap.add_argument("--title", default="GRPO learning on TFNS (SmolLM2-135M-Instruct, CPU)")
    a = ap.parse_args()

    import tempfile

    import yaml

    from finr1_core.config import embedded_model_dir
    from finr1_core.prompts import build_prompt
    from finr1_core.training.data import write_rows
    from finr1_core.training.recipes import read_yaml

    work = Path(a.work or tempfile.mkdtemp(prefix="finr1-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    recipe = read_yaml(a.recipe)
    prefix = str(recipe.get("think_prefix", "<think>\n"))
    max_tokens = int(recipe.get("max_completion_length", 256))

    train_all = load(a.data, "train")
    held_all = train_all if a.eval_data in (None, a.data) and a.data is not None else load(a.eval_data or a.data, "validation")
    train, held = split_rows(train_all, held_all, a.eval_rows, a.seed)
    if a.balance:  # as many training rows of each label as the rarest has (held-out rows keep their natural mix)
        by = {c: [r for r in train if r["answer"] == c] for c in LABELS}
        k = min(len(v) for v in by.values())
        train = [r for c in LABELS for r in random.Random(a.seed + 3).sample(by[c], k)]
    if a.train_rows:
        train = random.Random(a.seed + 1).sample(train, min(a.train_rows, len(train)))
    random.Random(a.seed + 2).shuffle(train)
    held_file = work / "heldout" / "tfns.jsonl"
    held_file.parent.mkdir(exist_ok=True)
    with held_file.open("w") as f:  # the raw TFNS schema, so `finr1 eval` reads it through the same loader
        for r in held:
            f.write(json.dumps({"text": tweet(r), "label": LABELS.index(r["answer"])}, ensure_ascii=False) + "\n")
    rows = [{"messages": build_prompt(r)["messages"], "answer": r["answer"], "answer_type": r["answer_type"]} for r in train]
    train_uri = write_rows(rows, str(work / "train.parquet"))
    print(f"grpo_learning: {len(train)} training rows, {len(held)} held-out rows, work folder {work}", flush=True)

    base = str(embedded_model_dir())
    model_dir = work / "grpo"
    ev = ["--benchmarks", "tfns", "--data", f"tfns={held_file}", "--max-tokens", str(max_tokens), "--temperature", "0",
          "--think-prefix", prefix, "--concurrency", str(a.concurrency), "--server", a.server, "--no-reference"]
    # a re-run with the same --work reuses what is done (finr1 eval's cache; a finished training job) and its timings
    times_file = work / "minutes.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}

    def timed(key: str, *args: str) -> None:
        COMMANDS.append("finr1 " + " ".join("''" if x == "" else x for x in args))
        if key in times:
            return
        t = time.time()
        finr1(*args, log=log)
        times[key] = (time.time() - t) / 60
        times_file.write_text(json.dumps(times))

    sets = [f"max_minutes={a.minutes}", f"seed={a.seed}"] + ([f"max_steps={a.max_steps}"] if a.max_steps else []) + a.set
    timed("eval, base", "eval", "--model", f"base={base}", *ev, "--out", str(work / "eval-base"))
    timed("GRPO training (the job, start-up included)", "train", "grpo", "--recipe", a.recipe, "--data", train_uri,
          "--output", str(model_dir), *[x for s in sets for x in ("--set", s)])
    timed("eval, trained", "eval", "--model", f"grpo={model_dir}", *ev, "--out", str(work / "eval-grpo"))

    before, after = summary(eval_rows(work / "eval-base")), summary(eval_rows(work / "eval-grpo"))
    res = json.loads((model_dir / "train_result.json").read_text())
    hist = res["log_history"]
    report = Path(a.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    png = report.with_suffix(".png")
    plot(hist, png, f"GRPO on TFNS, {res['steps']} steps")
    counts = {c: sum(1 for r in held if r["answer"] == c) for c in LABELS}
    major = max(counts, key=counts.get)
    from finr1_core.eval.stats import wilson_ci

    mlo, mhi = wilson_ci(counts[major], len(held))
    rewards = [float(e["reward"]) for e in hist if "reward" in e]
    zero = [float(e["frac_reward_zero_std"]) for e in hist if "frac_reward_zero_std" in e]  # groups without a spread (no gradient)
    q = max(1, len(rewards) // 4)
    minutes = sum(times.values())
    above = after["ci"][0] > before["ci"][1]
    ran = {**recipe, **{k: yaml.safe_load(v) for k, _, v in (x.partition("=") for x in a.set)}}  # the recipe as --set left it
    used = yaml.safe_dump({k: ran[k] for k in ("think_prefix", "reward_funcs", "learning_rate", "num_generations",
                                                "per_device_train_batch_size", "max_completion_length", "temperature") if k in ran},
                          sort_keys=False, default_flow_style=True).strip()

    def row(name, s):
        return f"| {name} | {s['n']} | {s['acc']:.3f} | [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] | {s['macro_f1']:.3f} |"

    md = f"""# {a.title}

Written by `benchmarks/grpo_learning.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); the commands it ran are
below. Held-out rows: a seeded sample (seed {a.seed}) of {len(held)} rows of the eval data; no held-out tweet is trained on.
Scoring: `finr1 eval` rules only (no judge: an answer the verifier cannot read counts as incorrect), greedy, prefix
{prefix!r}, at most {max_tokens} new tokens, served by {a.server} ({a.concurrency} requests in flight).

| model | n | accuracy | 95% Wilson | macro-F1 |
|---|---:|---:|---|---:|
{row('base (SmolLM2-135M-Instruct)', before)}
{row(f"GRPO, {res['steps']} steps", after)}
| majority class (always {major}) | {len(held)} | {counts[major] / len(held):.3f} | [{mlo:.3f}, {mhi:.3f}] | {(2 * counts[major] / (counts[major] + len(held))) / 3:.3f} |

Trained interval wholly above the base's: **{'yes' if above else 'no'}**. Above the majority-class baseline: **{'yes' if after['ci'][0] > counts[major] / len(held) else 'no'}**.

## Confusion matrices (rows: gold; columns: the label read from the answer)

Base:

{table_md(before['confusion'])}
After GRPO:

{table_md(after['confusion'])}
## Training

- Recipe `{a.recipe}` with `{' '.join('--set ' + s for s in sets)}`: {used}
- {len(train)} training rows available; {res['steps']} steps ({res['steps'] * int(recipe.get('per_device_train_batch_size', 8)) // int(recipe.get('num_generations', 8))} prompts seen), {res['seconds'] / 60:.1f} min.
- Mean reward (the training-batch accuracy, sampled at temperature {recipe.get('temperature')}): first quarter of steps
  {sum(rewards[:q]) / q if rewards else float('nan'):.3f}, last quarter {sum(rewards[-q:]) / q if rewards else float('nan'):.3f}.
- Prompt groups with a reward spread (some of the {recipe.get('num_generations')} answers right, some wrong: the only ones
  with a gradient): {1 - sum(zero) / len(zero) if zero else float('nan'):.2f} of all groups; first quarter of steps
  {1 - sum(zero[:q]) / q if zero else float('nan'):.2f}, last quarter {1 - sum(zero[-q:]) / q if zero else float('nan'):.2f}.
- Training rows: {'balanced, ' + str(len(train) // 3) + ' of each label' if a.balance else 'the natural label mix'}.

![reward curves]({png.name})

## Minutes

| part | minutes |
|---|---:|
{"".join(f"| {k} | {v:.1f} |{chr(10)}" for k, v in times.items())}| **total** | **{minutes:.1f}** |

## Commands

```
{chr(10).join(COMMANDS)}
```
"""
    report.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
