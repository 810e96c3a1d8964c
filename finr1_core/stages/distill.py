"""distill and score, one call per prompt shard: traces from the teacher (Ray workers inside),
then rule verdicts, judge scores and a route for each trace."""
from __future__ import annotations

from finr1_core.llm import ClientSpec
from finr1_core.stages.base import Context, Stage
from finr1_core.stages.data import prompt_dicts


def _distill(ctx: Context) -> dict:
    from finr1_core.distill import distill_shard

    cfg, store = ctx.cfg, ctx.store
    prompts = prompt_dicts(store.read_shard("prompts", ctx.shard).to_pylist())
    res = distill_shard(
        store,
        ctx.shard,
        prompts,
        cfg.teacher,
        cfg.distill,
        ClientSpec.from_role(cfg.teacher, ctx.base_url),
        cache_root=cfg.storage_root,
        tokenizer_path=cfg.teacher.tokenizer or cfg.teacher.model,
        progress_cb=ctx.progress,
        cfg_hash=ctx.hash,
    )
    return res if isinstance(res, dict) else res.as_dict()


def _score(ctx: Context) -> dict:
    from finr1_core.route import score_shard_rows

    traces = ctx.store.read_shard("distill", ctx.shard).to_pylist()
    prompts = {p["record_id"]: p for p in ctx.store.read_shard("prompts", ctx.shard).to_pylist()}
    judge = ClientSpec.from_role(ctx.cfg.judge, ctx.base_url).build()
    rows, usage = score_shard_rows(traces, prompts, judge, ctx.cfg.filter, judge_role=ctx.cfg.judge)
    ctx.write("scored", ctx.shard, rows, source_shards=[ctx.shard], extra=usage)
    routes: dict[str, int] = {}
    for r in rows:
        routes[r["route"]] = routes.get(r["route"], 0) + 1
    return {"shard": ctx.shard, "rows": len(rows), "routes": routes, **usage}


def _committed_shard(ctx: Context) -> dict | None:
    """A distill shard already committed with this hash: its summary from the index entry."""
    if not ctx.store.shard_committed("distill", ctx.shard, ctx.hash):
        return None
    entry = next(e for e in ctx.store.shards("distill") if e["shard"] == ctx.shard)
    ex = entry.get("extra") or {}
    keep = ("requests", "cached", "prompt_tokens", "completion_tokens", "cost_usd", "flags")
    return {"shard": ctx.shard, "rows": entry["rows"], "path": entry["path"], "requested": 0, "completed": 0,
            "paid_prompt_tokens": 0, "paid_completion_tokens": 0, "paid_cost_usd": 0.0, **{k: ex[k] for k in keep if k in ex}}


def _teacher(c):
    t = c.teacher
    return (t.model, t.mode, t.temperature, t.top_p, t.max_tokens, t.n)


def _judge(c):
    j = c.judge
    return (c.filter.rel_tol, c.filter.judge_retries, j.model, j.temperature, j.max_tokens)


DISTILL = Stage(
    name="distill",
    inputs=("prompts",),
    outputs=("distill",),
    depends=_teacher,
    body=_distill,
    sharded=True,
    done=_committed_shard,
    doc="prompts shard -> teacher traces (exactly once, through the durable response cache)",
)

SCORE = Stage(
    name="score",
    inputs=("distill",),
    outputs=("scored",),
    depends=_judge,
    body=_score,
    sharded=True,
    doc="traces shard -> rule verdicts + answer/reasoning judge scores + route (sft or rl)",
)
