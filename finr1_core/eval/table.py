"""The results table: models x benchmarks, n and a 95% Wilson interval per cell, failures, and
"Average" = the mean over the benchmark columns (not over rows); Markdown, JSON, a bar chart with
error bars and the per-row Parquet, all under the eval's output URI."""
from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from finr1_core.storage import join, storage_options_from_env

from .benchmarks import BENCHMARKS, Benchmark
from .cache import write_atomic
from .stats import wilson_ci

# Fin-R1's published accuracy (its README), shown beside our numbers and labelled as such.
REFERENCE = {
    "Fin-R1-7B (published)": {"FinQA": 0.761, "ConvFinQA": 0.84, "Ant_Finance": 0.81, "TFNS": 0.718, "Finance-Instruct": 0.629},
    "Qwen2.5-7B-Instruct (published)": {"FinQA": 0.60, "ConvFinQA": 0.66, "Ant_Finance": 0.85, "TFNS": 0.68, "Finance-Instruct": 0.49},
}


def cell(scores: Sequence[float], failed: int) -> dict:
    """scores: per row, the mean correctness over its samples (0/1 with one sample)."""
    n = len(scores)
    k = float(sum(scores))
    lo, hi = wilson_ci(k, n)
    return {"n": n, "correct": k, "accuracy": (k / n) if n else None, "ci_low": lo if n else None, "ci_high": hi if n else None, "failed": failed}


def build_table(rows: Sequence[dict], benches: Sequence[Benchmark], models: Sequence[str]) -> dict:
    """``{"columns": [labels], "models": {model: {label: cell, "Average": float|None, "failed": int}}}``."""
    per: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        per[(r["model"], r["benchmark"], r["row_id"])].append(bool(r["correct"]))
        failed[(r["model"], r["benchmark"])] += int(r.get("scored_by") == "error")
    by_cell: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (m, b, _), v in per.items():
        by_cell[(m, b)].append(sum(v) / len(v))
    out = {"columns": [b.label for b in benches], "models": {}}
    for m in models:
        cells = {b.label: cell(by_cell.get((m, b.name), []), failed.get((m, b.name), 0)) for b in benches}
        accs = [c["accuracy"] for c in cells.values() if c["accuracy"] is not None]
        out["models"][m] = {**cells, "Average": (sum(accs) / len(accs)) if accs else None, "failed": sum(c["failed"] for c in cells.values())}
    return out


def _fmt(c: dict) -> str:
    if not c["n"]:
        return "–"
    return f"{c['accuracy']:.3f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] n={c['n']}"


def to_markdown(table: dict, reference: bool = True, judge: str | None = None) -> str:
    cols = table["columns"]
    lines = ["| Model | " + " | ".join(cols) + " | Average | Failed requests |", "|---" * (len(cols) + 3) + "|"]
    for m, row in table["models"].items():
        avg = "–" if row["Average"] is None else f"{row['Average']:.3f}"
        lines.append(f"| {m} | " + " | ".join(_fmt(row[c]) for c in cols) + f" | {avg} | {row['failed']} |")
    if reference and any(c in v for v in REFERENCE.values() for c in cols):
        for m, vals in REFERENCE.items():
            shown = [vals.get(c) for c in cols]
            present = [v for v in shown if v is not None]
            avg = f"{sum(present) / len(present):.3f}" if present else "–"
            lines.append(f"| *{m}, reference* | " + " | ".join("–" if v is None else f"{v:.3f}" for v in shown) + f" | {avg} | – |")
    notes = [
        "",
        "Cells: accuracy [95% Wilson interval] n=rows. Average: mean over the benchmark columns shown. "
        "A failed request counts as incorrect and is counted in 'Failed requests'.",
        "Scoring: rule verifier first, then " + (f"the answer judge ({judge})" if judge else "no judge (undecided rows count as incorrect)") + ".",
    ]
    general = [b.label for b in BENCHMARKS.values() if b.kind == "harness" and b.label in cols]
    if general:
        notes.append(f"{', '.join(general)}: scored by lm-evaluation-harness 0.4.13's own scorers (docs/eval.md, General benchmarks).")
    if reference:
        notes.append("Rows in italics are Fin-R1's published numbers (its README), for reference; they are not measured here.")
    return "\n".join(lines + notes) + "\n"


def bar_chart_png(table: dict) -> bytes:
    """Grouped bars (one group per benchmark, one bar per model) with the 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, models = table["columns"], list(table["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols) * max(1, len(models)) / 2 + 2), 4), dpi=100)
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs, ys, err = [], [], [[], []]
        for j, c in enumerate(cols):
            cl = table["models"][m][c]
            if not cl["n"]:
                continue
            xs.append(j + (i - (len(models) - 1) / 2) * width)
            ys.append(cl["accuracy"])
            err[0].append(max(0.0, cl["accuracy"] - cl["ci_low"]))
            err[1].append(max(0.0, cl["ci_high"] - cl["accuracy"]))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: str, rows: Sequence[dict], table: dict, reference: bool = True, judge: str | None = None) -> tuple[str, dict]:
    """results.parquet (every row), table.md, table.json and chart.png under ``out``."""
    fs, _ = fsspec.core.url_to_fs(out, **storage_options_from_env(out))
    uris = {k: join(out, n) for k, n in (("rows", "results.parquet"), ("markdown", "table.md"), ("json", "table.json"), ("chart", "chart.png"))}
    md = to_markdown(table, reference, judge)
    keys = list(dict.fromkeys(k for r in rows for k in r))  # finance and harness rows: every column kept
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]) if rows else pa.table({}), buf, compression="zstd")
    p = fs._strip_protocol
    write_atomic(fs, p(uris["rows"]), buf.getvalue())
    write_atomic(fs, p(uris["markdown"]), md.encode())
    write_atomic(fs, p(uris["json"]), json.dumps(table, indent=2).encode())
    write_atomic(fs, p(uris["chart"]), bar_chart_png(table))
    return md, uris


def table_rows(table: dict) -> list[dict]:
    """One artifact row per model: accuracy, interval and n per benchmark, the average, failures."""
    out = []
    for m, row in table["models"].items():
        r = {"model": m}
        for c in table["columns"]:
            cl = row[c]
            r[c] = "–" if not cl["n"] else f"{cl['accuracy']:.3f} [{cl['ci_low']:.2f}, {cl['ci_high']:.2f}] n={cl['n']}"
        r["Average"] = "–" if row["Average"] is None else f"{row['Average']:.3f}"
        r["failed requests"] = row["failed"]
        out.append(r)
    return out
