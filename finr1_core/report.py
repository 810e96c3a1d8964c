"""The run report: Markdown with the seed-style results table, the per-source distribution table,
stage row counts, pass rates, tokens and cost, and links to every dataset written."""
from __future__ import annotations

from typing import Iterable

FIN_R1_REFERENCE = {
    "Fin-R1-7B (published)": {"FinQA": 0.761, "ConvFinQA": 0.84, "Ant_Finance": 0.81, "TFNS": 0.718, "Finance-Instruct": 0.629},
    "Qwen2.5-7B-Instruct (published)": {"FinQA": 0.60, "ConvFinQA": 0.66, "Ant_Finance": 0.85, "TFNS": 0.68, "Finance-Instruct": 0.49},
}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def md_table(header: list[str], rows: Iterable[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(x) for x in r) + " |")
    return "\n".join(lines)


def results_table(acc: dict[str, dict[str, float | None]], include_reference: bool = True) -> str:
    cols: list[str] = []
    for row in acc.values():
        for c in row:
            if c not in cols and c != "Average":
                cols.append(c)
    cols.append("Average")
    rows = [[m] + [acc[m].get(c) for c in cols] for m in acc]
    if include_reference:
        for m, ref in FIN_R1_REFERENCE.items():
            rows.append([m] + [ref.get(c) for c in cols])
    return md_table(["Model"] + cols, rows)


def render_report(
    *,
    run_id: str,
    storage_root: str,
    profile: str,
    stage_counts: dict[str, int],
    accuracy: dict[str, dict[str, float | None]],
    distribution: str,
    route_counts: dict[str, int],
    pass_rates: dict[str, float | None],
    accounting: dict,
    removed: dict[str, int],
    links: dict[str, str],
    timings: dict[str, float],
    models: dict[str, str],
) -> str:
    parts = [
        f"# finr1 run `{run_id}`",
        "",
        f"Profile: **{profile}** · storage root: `{storage_root}`",
        "",
        "## Results (accuracy on held-out rows)",
        "",
        "Rule scoring first; rows the rules cannot decide go to the LLM answer judge. "
        "Published Fin-R1 figures are shown for reference only: the embedded profile uses a 135M model "
        "and a handful of rows, so it proves the machinery, not the quality.",
        "",
        results_table(accuracy),
        "",
        "## Models",
        "",
        md_table(["Model", "Checkpoint"], [[k, f"`{v}`"] for k, v in models.items()]),
        "",
        "## Training data distribution (per source)",
        "",
        distribution,
        "",
        "## Stages",
        "",
        md_table(["Stage", "Rows out"], [[k, v] for k, v in stage_counts.items()]),
        "",
        md_table(["Step", "Wall time (s)"], [[k, f"{v:.1f}"] for k, v in timings.items()]) if timings else "",
        "",
        "## Filtering",
        "",
        md_table(["Check", "Pass rate"], [[k, v] for k, v in pass_rates.items()]),
        "",
        md_table(["Route", "Rows"], [[k, v] for k, v in route_counts.items()]),
        "",
        md_table(["Removed", "Rows"], [[k, v] for k, v in removed.items()]) if removed else "Nothing removed by dedup or decontamination.",
        "",
        "## Distillation accounting",
        "",
        md_table(["Metric", "Value"], [[k, v] for k, v in accounting.items()]),
        "",
        "## Outputs",
        "",
        md_table(["What", "Where"], [[k, f"`{v}`"] for k, v in links.items()]),
        "",
    ]
    return "\n".join(parts)
