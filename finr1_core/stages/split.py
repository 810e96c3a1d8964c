"""split: route (already on each scored row), dedup, decontaminate against the held-out rows, write
the ``sft``/``rl`` splits and release Financial-R1-Distill-Data with its card."""
from __future__ import annotations

from finr1_core.stages.base import Context, Stage


def _split(ctx: Context) -> dict:
    from finr1_core.dedup import dedup_and_decontaminate
    from finr1_core.release import RELEASE_SCHEMA, release_dataset, release_row

    store = ctx.store
    scored = store.read_rows("scored")
    eval_texts = {r["id"]: r["question"] for r in store.read_rows("heldout")}
    res = dedup_and_decontaminate(scored, eval_texts, ctx.cfg.filter)
    kept = {r["key"] for r in res.kept}
    routed: dict[str, list[dict]] = {"sft": [], "rl": []}
    for r in scored:
        if r["key"] in kept:
            routed["sft" if r["route"] == "sft" else "rl"].append(release_row(r))
    for split, rows in routed.items():
        ctx.write(split, split, rows, schema=RELEASE_SCHEMA, source_shards=["scored"])
    rel = release_dataset(scored, store.uri("release"), removals=res.removed, storage_options=store.storage_options)
    out = {
        "scored": len(scored),
        "routed_sft": sum(1 for r in scored if r["route"] == "sft"),
        "routed_rl": sum(1 for r in scored if r["route"] == "rl"),
        "sft": len(routed["sft"]),
        "rl": len(routed["rl"]),
        "removed": res.counts(),
        "release": rel["uri"],
        "card": rel["files"].get("card"),
    }
    return {**out, "manifest": {"release": {"summary": out}}}


def _released(ctx: Context) -> dict | None:
    if not all(ctx.store.stage_complete(o, ctx.hash) for o in SPLIT.outputs):
        return None
    return dict((ctx.store.stage_manifest("release") or {}).get("summary", {}))


SPLIT = Stage(
    name="split",
    inputs=("score",),
    outputs=("sft", "rl", "release"),
    depends=lambda c: (c.filter,),
    body=_split,
    done=_released,
    doc="scored -> dedup + decontamination -> sft / rl splits + the released dataset and card",
)
