"""The one place that runs a stage: hash, skip-if-committed, body, commit."""
from __future__ import annotations

from finr1_core.config import PipelineConfig
from finr1_core.stages.base import Context, ProgressCB, summary
from finr1_core.stages.registry import STAGES, stage
from finr1_core.stages.runs import store_for
from finr1_core.storage import Store, config_hash


def _dump(x):
    return x.model_dump(mode="json") if hasattr(x, "model_dump") else x


def stage_hash(cfg: PipelineConfig, name: str) -> str:
    """Hash of a stage's own config fields chained with the hashes of its inputs."""
    st = stage(name)
    own = [_dump(x) for x in st.depends(cfg)]
    return config_hash({"stage": name, "config": own, "inputs": {i: stage_hash(cfg, i) for i in st.inputs}})


def _done(st, ctx: Context) -> dict | None:
    if st.done is not None:
        return st.done(ctx)
    if st.sharded:
        return {"shard": ctx.shard} if ctx.store.shard_committed(st.outputs[0], ctx.shard, ctx.hash) else None
    if all(ctx.store.stage_complete(o, ctx.hash) for o in st.outputs):
        return summary(ctx.store, st.outputs[0])
    return None


def run_stage(cfg: PipelineConfig, name: str, shard: str | None = None, *, base_url: str | dict | None = None,
              progress: ProgressCB | None = None, **options) -> dict:
    """Run stage ``name`` (of shard ``shard`` for a sharded stage) unless its output is already
    committed under the same chained hash. Returns a JSON-able summary with ``skipped``."""
    st = stage(name)
    if st.sharded and not shard:
        raise ValueError(f"stage {name} runs per shard: give the shard")
    from finr1_core.serving import for_served

    # the hash is the config's; the body gets it as the managed servers can serve it (see for_served)
    ctx = Context(for_served(cfg, base_url), store_for(cfg), stage_hash(cfg, name), shard, base_url, progress, options)
    if st.cached and (prior := _done(st, ctx)) is not None:
        return {**prior, "stage": name, "skipped": True}
    if st.sharded:
        ctx.store.begin_stage(st.outputs[0])
    out = st.body(ctx)
    extras = out.pop("manifest", {}) if isinstance(out, dict) else {}
    if not st.sharded:
        for o in st.outputs:
            ctx.store.complete_stage(o, ctx.hash, extras.get(o))
        if st.outputs and not out:
            out = summary(ctx.store, st.outputs[0])
    return {**out, "stage": name, "skipped": False}


def finish_stage(cfg: PipelineConfig, name: str, shards: list[str]) -> dict:
    """Mark a sharded stage complete once every expected shard is committed with its hash."""
    st = stage(name)
    store, h = store_for(cfg), stage_hash(cfg, name)
    output = st.outputs[0]
    missing = [s for s in shards if not store.shard_committed(output, s, h)]
    if missing:
        raise RuntimeError(f"stage {name}: {len(missing)} shard(s) not committed: {', '.join(missing[:10])}")
    store.complete_stage(output, h)
    return summary(store, output)


def expected_shards(store: Store) -> dict[str, list[str]]:
    """Per started sharded stage (distill, scored), every prompt shard: what ``finr1 check`` expects."""
    prompt_shards = [e["shard"] for e in store.shards("prompts")]
    begun = set(store.stages())
    return {s.outputs[0]: prompt_shards for s in STAGES.values() if s.sharded and s.outputs[0] in begun}


def pending_shards(cfg: PipelineConfig) -> dict[str, list[str]]:
    """Per sharded stage, the prompt shards not yet committed with the current hash."""
    store = store_for(cfg)
    shards = [e["shard"] for e in store.shards("prompts")]
    out = {}
    for name in ("distill", "score"):
        st, h = stage(name), stage_hash(cfg, name)
        out[st.outputs[0]] = [s for s in shards if not store.shard_committed(st.outputs[0], s, h)]
    return out
