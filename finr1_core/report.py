"""The run report: Markdown with the seed-style results table, the per-source distribution table,
stage row counts, pass rates, tokens and cost, and links to every dataset written."""
from __future__ import annotations

from typing import Iterable


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


def render_report(
    *,
    run_id: str,
    storage_root: str,
    profile: str,
    stage_counts: dict[str, int],
    results: str,
    training: str = "",
    distribution: str,
    route_counts: dict[str, int],
    pass_rates: dict[str, float | None],
    accounting: dict,
    removed: dict[str, int],
    links: dict[str, str],
    timings: dict[str, float],
    models: dict[str, str],
    serving: str = "",
) -> str:
    parts = [
        f"# finr1 run `{run_id}`",
        "",
        f"Profile: **{profile}** · storage root: `{storage_root}`",
        "",
        "## Results (accuracy on held-out rows and named benchmarks)",
        "",
        "Rule scoring first; rows the rules cannot decide go to the LLM answer judge. Each cell has n and a 95% "
        "Wilson interval; Average is the mean over benchmark columns. Published Fin-R1 figures are reference rows "
        "only: the embedded profile uses a 135M model and a handful of rows, so it proves the machinery, not the quality.",
        "",
        results or "No model was evaluated.",
        "",
        "## Models",
        "",
        md_table(["Model", "Checkpoint"], [[k, f"`{v}`"] for k, v in models.items()]),
        "",
        "## Serving",
        "",
        serving or "No model was served by finr1 (external endpoints only).",
        "",
        "## Training",
        "",
        training or "Nothing was trained.",
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


def training_table(training: dict[str, dict]) -> str:
    """One row per trained checkpoint: steps, loss, and for GRPO the reward spread per step
    (a step whose rewards do not vary has a zero gradient)."""
    rows = []
    for name, t in training.items():
        r = t.get("reward") or {}
        note = t.get("reason") or ""
        rows.append([name, t.get("steps"), t.get("train_loss"), t.get("resumed_from_step") or "-",
                     r.get("zero_reward_std_steps", "-"), r.get("max_reward_std", "-"), r.get("mean_reward", "-"),
                     f"`{t['plot']}`" if t.get("plot") else "-", note])
    return md_table(["Model", "Steps", "Final loss", "Resumed from step", "Steps with zero reward spread", "Max reward std",
                     "Mean reward", "Curves (loss, reward, lr)", "Note"], rows)


def serving_table(store) -> str:
    """What served each model finr1 started: the teacher and judge servers (``serving.json``, written
    when they start) and the eval's servers (the eval stage's manifest); engine and start-up time."""
    rows = []
    if store.exists(store.uri("serving.json")):
        sv = store.read_json(store.uri("serving.json"))
        note = f" (fallback: {sv['fallback_reason']})" if sv.get("fallback_reason") else ""
        for x in sv.get("servers", []):
            rows.append(["teacher, judge (distill, score)", f"`{x['model']}`", x["engine"] + note, x.get("startup_s", "-")])
    for x in (store.stage_manifest("eval") or {}).get("served") or []:
        rows.append([f"eval: {x.get('name') or '-'}", f"`{x['model']}`", x["engine"], x.get("startup_s", "-")])
    return md_table(["Served for", "Model", "Engine", "Start-up (s)"], rows) if rows else ""


def write_run_report(cfg, store, timings: dict[str, float], models: dict[str, str], training: dict[str, dict] | None = None) -> dict:
    """Gather a run's figures from its store, write ``report/report.md`` and ``report/summary.json``."""
    from finr1_core.release import distribution_table

    table_md = store.uri("eval", "table", "table.md")
    results = store.read_bytes(table_md).decode() if store.exists(table_md) else ""
    skipped = (store.stage_manifest("eval") or {}).get("not_evaluated") or {}
    results += "".join(f"\n- **{m}** not evaluated: {why}" for m, why in skipped.items())
    table_json = store.uri("eval", "table", "table.json")
    table = store.read_json(table_json) if store.exists(table_json) else {"columns": [], "models": {}}
    acc = {m: {**{c: row[c]["accuracy"] for c in table["columns"]}, "Average": row["Average"]} for m, row in table["models"].items()}
    scored = store.read_rows("scored")
    sft, rl = store.read_rows("sft"), store.read_rows("rl")
    rel = (store.stage_manifest("release") or {}).get("summary", {})
    rows = {st: sum(e["rows"] for e in store.shards(st)) for st in ("records", "quarantine", "heldout", "prompts", "distill", "scored")}
    stage_counts = {"ingest (records)": rows["records"], **{k: rows[k] for k in ("quarantine", "heldout", "prompts", "distill", "scored")},
                    "sft": len(sft), "rl": len(rl)}
    n = len(scored) or 1
    pass_rates = {
        "round 1: answer correct (rule or judge)": sum(1 for r in scored if r.get("answer_correct")) / n if scored else None,
        "round 2: reasoning judge = 1": sum(1 for r in scored if r.get("reasoning_judge") == 1) / n if scored else None,
        "both rounds (SFT route)": sum(1 for r in scored if r.get("route") == "sft") / n if scored else None,
    }
    acct = token_accounting(store)
    links = {s: store.uri(s) for s in ("records", "quarantine", "distill", "scored", "sft", "rl", "release", "eval")}
    links["report"] = store.uri("report", "report.md")
    md = render_report(
        run_id=cfg.run_id, storage_root=cfg.storage_root, profile=cfg.profile, stage_counts=stage_counts, results=results,
        training=training_table(training or {}),
        distribution=distribution_table({"sft": sft, "rl": rl}), route_counts={"sft": len(sft), "rl": len(rl)},
        pass_rates=pass_rates, accounting=acct, removed=rel.get("removed", {}), links=links, timings=timings, models=models,
        serving=serving_table(store),
    )
    store.write_text(store.uri("report", "report.md"), md)
    store.write_json(store.uri("report", "summary.json"), {"accuracy": acc, "stage_counts": stage_counts, "pass_rates": pass_rates, "accounting": acct})
    return {"report": store.uri("report", "report.md"), "accuracy": acc, "table": table, "stage_counts": stage_counts, "markdown": md}


def token_accounting(store) -> dict:
    """Tokens and cost of the teacher (over the committed distill shards) and of the judges (over
    the committed score shards), and their total cost."""
    from finr1_core.judge import sum_judge_usage

    pt = ct = 0
    cost = 0.0
    for e in store.shards("distill"):
        x = e.get("extra", {})
        pt += int(x.get("prompt_tokens", 0))
        ct += int(x.get("completion_tokens", 0))
        cost += float(x.get("cost_usd", 0.0))
    j = sum_judge_usage([e.get("extra") or {} for e in store.shards("scored")])
    return {"teacher prompt tokens": pt, "teacher completion tokens": ct, "teacher cost (USD)": round(cost, 4),
            "judge requests": j["judge_requests"], "judge prompt tokens": j["judge_prompt_tokens"],
            "judge completion tokens": j["judge_completion_tokens"], "judge cost (USD)": round(j["judge_cost_usd"], 4),
            "cost (USD)": round(cost + j["judge_cost_usd"], 4)}
