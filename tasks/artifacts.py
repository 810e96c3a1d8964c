"""The artifacts finr1 publishes in the Prefect UI: tables, Markdown and links per stage."""
from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from finr1_core import stages
from finr1_core.config import PipelineConfig
from finr1_core.judge import sum_judge_usage


def publish_ingest_distribution(c: PipelineConfig) -> None:
    from finr1_core.ingest import distribution_table
    from finr1_core.records import table_to_records

    store = stages.store_for(c)
    create_markdown_artifact(
        key="ingest-distribution",
        markdown="## Ingested records per source (training rows; held-out rows excluded)\n\n"
        + distribution_table(table_to_records(store.read_stage("records")), store.read_rows("quarantine")),
        description="Records per source after ingest",
    )


def publish_split_summary(c: PipelineConfig, out: dict) -> None:
    store = stages.store_for(c)
    rows = [{"check": k, "value": v} for k, v in out.items() if isinstance(v, (int, float, str)) and k not in ("skipped", "stage")]
    create_table_artifact(key="filter-summary", table=rows, description="Filtering: rows in/out, pass rates")
    create_link_artifact(key="release", link=store.uri("release"), description="Financial-R1-Distill-Data (parquet + card)")
    publish_stage_summary(c)


def publish_training(out: dict) -> None:
    """Steps, loss, reward spread and the curves plot of a training stage."""
    from finr1_core.report import training_table

    name = out.get("model") or out.get("stage")
    create_markdown_artifact(key=f"train-{name}", markdown=f"## {name}\n\n" + training_table({name: out}),
                             description=f"{name} training: steps, loss, reward spread, curves")
    get_run_logger().info("%s: %s", name, {k: v for k, v in out.items() if k != "log_history"})


def publish_report(c: PipelineConfig, out: dict) -> None:
    create_markdown_artifact(key="finr1-report", markdown=out["markdown"], description=f"finr1 run {c.run_id}")
    from finr1_core.eval.table import table_rows

    if out["table"]["models"]:
        create_table_artifact(key="results", table=table_rows(out["table"]), description="Accuracy per model and benchmark, 95% Wilson intervals")
    create_link_artifact(key="report-link", link=out["report"], description="report.md")
    get_run_logger().info("report: %s", out["report"])


def stage_summary_rows(c: PipelineConfig) -> tuple[list[dict], str]:
    """(rows in/out, pass rates, tokens and cost per stage; Markdown with the Parquet paths)."""
    store = stages.store_for(c)
    ent = {st: store.shards(st) for st in ("records", "quarantine", "heldout", "prompts", "distill", "scored", "sft", "rl", "eval")}
    n = {st: sum(e["rows"] for e in es) for st, es in ent.items()}
    x = [e.get("extra") or {} for e in ent["distill"]]
    pt, ct = sum(int(e.get("prompt_tokens", 0)) for e in x), sum(int(e.get("completion_tokens", 0)) for e in x)
    cost = sum(float(e.get("cost_usd", 0.0)) for e in x)
    paid = sum(int(e.get("paid_prompt_tokens", 0)) + int(e.get("paid_completion_tokens", 0)) for e in x)
    flagged = sum(sum((e.get("flags") or {}).values()) for e in x)
    j = sum_judge_usage([e.get("extra") or {} for e in ent["scored"]])
    scored = store.read_stage("scored").select(["answer_correct", "route"]).to_pylist() if ent["scored"] else []
    ans = sum(1 for r in scored if r.get("answer_correct"))
    sft_route = sum(1 for r in scored if r.get("route") == "sft")

    def rate(a, b):
        return round(a / b, 3) if b else None

    def row(stage, rin, rout, pass_rate, note="", tokens=(None, None), usd=None):
        return {"stage": stage, "rows in": rin, "rows out": rout, "pass rate": pass_rate, "prompt tokens": tokens[0],
                "completion tokens": tokens[1], "cost (USD)": usd, "note": note}

    ing_in = n["records"] + n["heldout"] + n["quarantine"]
    rows = [
        row("ingest", ing_in, n["records"] + n["heldout"], rate(n["records"] + n["heldout"], ing_in), f"{n['quarantine']} quarantined, {n['heldout']} held out for eval"),
        row("prompts", n["records"], n["prompts"], rate(n["prompts"], n["records"]), f"{len(ent['prompts'])} shard(s)"),
        row("distill", n["prompts"], n["distill"], rate(n["distill"] - flagged, n["distill"]),
            f"{flagged} flagged (truncated/empty/no </think>); {paid} tokens paid in this run, the rest from the response cache", (pt, ct), round(cost, 4)),
        row("score: round 1 (answer)", len(scored), ans, rate(ans, len(scored)),
            f"rule verifier, judge when undecided; judge tokens and cost cover both rounds ({j['judge_requests']} judge requests)",
            (j["judge_prompt_tokens"], j["judge_completion_tokens"]), round(j["judge_cost_usd"], 4)),
        row("score: round 2 (reasoning)", ans, sft_route, rate(sft_route, ans), "reasoning judge = 1 -> SFT route"),
    ]
    if ent["sft"] or ent["rl"]:
        rows.append(row("split + release", len(scored), n["sft"] + n["rl"], rate(n["sft"], n["sft"] + n["rl"]), f"sft {n['sft']}, rl {n['rl']}; the rest removed by dedup/decontamination"))
    if ent["eval"]:
        rows.append(row("eval", n["heldout"], n["eval"], None, ", ".join(e["shard"] for e in ent["eval"])))
    md = [f"## Parquet outputs of run `{c.run_id}`\n", f"Storage: `{store.base}`\n", "| stage | rows | shards | path |", "|---|---:|---:|---|"]
    files = []
    for st, es in ent.items():
        if es:
            md.append(f"| {st} | {n[st]} | {len(es)} | [{store.uri(st)}]({store.uri(st)}) |")
            files += [f"- `{e['path']}` ({e['rows']} rows)" for e in es[:20]] + ([f"- ... {len(es) - 20} more"] if len(es) > 20 else [])
    if store.exists(store.uri("release")):
        md.append(f"| release | {n['sft'] + n['rl']} | - | [{store.uri('release')}]({store.uri('release')}) |")
    md += ["", "### Shard files", ""] + files
    return rows, "\n".join(md)


def publish_stage_summary(c: PipelineConfig) -> list[dict]:
    rows, md = stage_summary_rows(c)
    create_table_artifact(key="stage-summary", table=rows, description=f"Rows in/out, pass rates, tokens and cost per stage (run {c.run_id})")
    create_markdown_artifact(key="parquet-paths", markdown=md, description=f"Parquet paths of run {c.run_id}")
    return rows
