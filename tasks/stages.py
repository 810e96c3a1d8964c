"""Thin Prefect tasks over ``finr1_core.pipeline``: one task per stage, or one per shard.

Each task takes the validated config as a plain dict (JSON-able, so Prefect can hash it for its
cache and show it in the UI), rebuilds the config, calls the library and publishes artifacts.
Completed work is skipped twice over: Prefect's persisted results (cache policy
``INPUTS + TASK_SOURCE``, which survives new flow runs, unlike the default) and the shard store's
manifests (which survive anything, including a new Prefect database).
"""
from __future__ import annotations

import math
import time

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import INPUTS, TASK_SOURCE

from finr1_core import pipeline
from finr1_core.config import PipelineConfig

# The managed server's URL changes every run: it must not be part of any cache key.
CACHE = (INPUTS - "base_url") + TASK_SOURCE
SHARD_OPTS = dict(retries=2, retry_delay_seconds=[2, 10], persist_result=True, cache_policy=CACHE)
STAGE_OPTS = dict(retries=1, retry_delay_seconds=5, persist_result=True, cache_policy=CACHE)


def _cfg(cfg: dict) -> PipelineConfig:
    return resolve_secrets(PipelineConfig.model_validate(cfg))


def resolve_secrets(c: PipelineConfig) -> PipelineConfig:
    """Endpoints whose key lives in a Prefect Secret block: load it into this process's environment
    (never into the config, a result, a log or a file) under the endpoint's ``api_key_env``.
    A key already in the environment wins."""
    import os

    for role in (c.teacher, c.judge):
        for e in role.endpoints:
            if not e.api_key_secret:
                continue
            var = e.api_key_env or f"FINR1_API_KEY_{''.join(ch if ch.isalnum() else '_' for ch in e.name).upper()}"
            e.api_key_env = var
            if not os.environ.get(var):
                from prefect.blocks.system import Secret

                os.environ[var] = Secret.load(e.api_key_secret).get()
    return c


def _key(s: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:60]


@task(name="ingest", **STAGE_OPTS)
def ingest(cfg: dict) -> dict:
    c = _cfg(cfg)
    out = pipeline.stage_ingest(c)
    store = pipeline.store_for(c)
    from finr1_core.ingest import distribution_table
    from finr1_core.records import table_to_records

    create_markdown_artifact(
        key="ingest-distribution",
        markdown="## Ingested records per source (training rows; held-out rows excluded)\n\n"
        + distribution_table(table_to_records(store.read_stage("records")), store.read_rows("quarantine")),
        description="Records per source after ingest",
    )
    get_run_logger().info("ingest: %s records, skipped=%s", out["rows"], out["skipped"])
    return out


@task(name="prompts", **STAGE_OPTS)
def prompts(cfg: dict) -> dict:
    out = pipeline.stage_prompts(_cfg(cfg))
    get_run_logger().info("prompts: %s rows in %s shards", out["rows"], len(out["shards"]))
    return out


@task(name="distill-shard", tags=["teacher"], **SHARD_OPTS)
def distill_shard(cfg: dict, shard: str, base_url: str | None) -> dict:
    log = get_run_logger()
    state = {"id": None, "t": 0.0}

    def progress(done: int, total: int, tok_s: float = 0.0, eta_s: float | None = None) -> None:
        now = time.monotonic()
        pct = 100.0 * done / max(1, total)
        if state["id"] is None:
            state["id"] = create_progress_artifact(progress=pct, key=_key(f"distill-{shard}"), description=f"distill {shard}")
        elif now - state["t"] > 1.0 or done == total:
            update_progress_artifact(artifact_id=state["id"], progress=pct)
        if now - state["t"] > 5.0 or done == total:
            eta = f"{eta_s:.0f}s" if eta_s is not None and math.isfinite(eta_s) else "?"
            log.info("distill %s: %d/%d rows, %.1f tok/s, ETA %s", shard, done, total, tok_s, eta)
            state["t"] = now

    out = pipeline.stage_distill_shard(_cfg(cfg), shard, base_url, progress_cb=progress)
    log.info("distill %s: %s", shard, {k: v for k, v in out.items() if k not in ("errors",)})
    return out


@task(name="score-shard", tags=["judge"], **SHARD_OPTS)
def score_shard(cfg: dict, shard: str, base_url: str | None) -> dict:
    out = pipeline.stage_score_shard(_cfg(cfg), shard, base_url)
    get_run_logger().info("score %s: %s", shard, out)
    return out


@task(name="finish-stage", persist_result=False)
def finish_stage(cfg: dict, stage: str, shards: list[str], h: str) -> dict:
    return pipeline.finish_stage(_cfg(cfg), stage, shards, h)


@task(name="split-release", **STAGE_OPTS)
def split_release(cfg: dict) -> dict:
    out = pipeline.stage_split(_cfg(cfg))
    store = pipeline.store_for(_cfg(cfg))
    rows = [{"check": k, "value": v} for k, v in out.items() if isinstance(v, (int, float, str)) and k != "skipped"]
    create_table_artifact(key="filter-summary", table=rows, description="Filtering: rows in/out, pass rates")
    create_link_artifact(key="release", link=store.uri("release"), description="Financial-R1-Distill-Data (parquet + card)")
    publish_stage_summary(cfg)  # ops (issue 6)
    return out


@task(name="train-sft", **STAGE_OPTS)
def train_sft(cfg: dict) -> dict:
    out = pipeline.stage_sft(_cfg(cfg))
    get_run_logger().info("sft: %s", out)
    return out


@task(name="train-grpo", **STAGE_OPTS)
def train_grpo(cfg: dict) -> dict:
    out = pipeline.stage_grpo(_cfg(cfg))
    get_run_logger().info("grpo: %s", out)
    return out


@task(name="evaluate", tags=["judge"], **STAGE_OPTS)
def evaluate(cfg: dict, model: str, base_url: str | None) -> dict:
    out = pipeline.stage_eval(_cfg(cfg), model, base_url)
    get_run_logger().info("eval %s: %s", model, out)
    return out


@task(name="report", persist_result=False)
def report(cfg: dict, timings: dict) -> dict:
    c = _cfg(cfg)
    out = pipeline.stage_report(c, timings)
    create_markdown_artifact(key="finr1-report", markdown=out["markdown"], description=f"finr1 run {c.run_id}")
    acc_rows = [{"model": m, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}} for m, row in out["accuracy"].items()]
    create_table_artifact(key="results", table=acc_rows, description="Accuracy per model and source")
    create_link_artifact(key="report-link", link=out["report"], description="report.md")
    return {k: v for k, v in out.items() if k != "markdown"}


# ---------------------------------------------------------------- ops (issue 6): stage summary artifacts
def _stage_summary_rows(c: PipelineConfig) -> tuple[list[dict], str]:
    """(rows in/out, pass rates, tokens and cost per stage; Markdown with the Parquet paths)."""
    store = pipeline.store_for(c)
    ent = {st: store.shards(st) for st in ("records", "quarantine", "heldout", "prompts", "distill", "scored", "sft", "rl", "eval")}
    n = {st: sum(e["rows"] for e in es) for st, es in ent.items()}
    x = [e.get("extra") or {} for e in ent["distill"]]
    pt, ct = sum(int(e.get("prompt_tokens", 0)) for e in x), sum(int(e.get("completion_tokens", 0)) for e in x)
    cost = sum(float(e.get("cost_usd", 0.0)) for e in x)
    paid = sum(int(e.get("paid_prompt_tokens", 0)) + int(e.get("paid_completion_tokens", 0)) for e in x)
    flagged = sum(sum((e.get("flags") or {}).values()) for e in x)
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
        row("score: round 1 (answer)", len(scored), ans, rate(ans, len(scored)), "rule verifier, judge when undecided"),
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


def publish_stage_summary(cfg: dict) -> list[dict]:
    c = _cfg(cfg)
    rows, md = _stage_summary_rows(c)
    create_table_artifact(key="stage-summary", table=rows, description=f"Rows in/out, pass rates, tokens and cost per stage (run {c.run_id})")
    create_markdown_artifact(key="parquet-paths", markdown=md, description=f"Parquet paths of run {c.run_id}")
    return rows


@task(name="stage-summary", persist_result=False)
def stage_summary(cfg: dict) -> list[dict]:
    """Publish the stage-summary table and the Parquet-paths artifact of a run."""
    return publish_stage_summary(cfg)
# ---------------------------------------------------------------- end ops
