"""ingest and prompts: sources -> validated records (+ held-out rows, quarantine) -> prompts."""
from __future__ import annotations

import json

from finr1_core.stages.base import Context, Stage


def _ingest(ctx: Context) -> dict:
    from finr1_core.ingest import ingest_sources
    from finr1_core.records import QUARANTINE_SCHEMA, records_to_table

    cfg = ctx.cfg
    records, quarantine = ingest_sources(cfg.data.sources, cfg.limit)
    train, heldout = split_heldout(records, {s.name for s in cfg.data.sources if s.role == "eval"}, cfg.data.eval_holdout)
    for name in sorted({r["repo_name"] for r in train}):
        ctx.write("records", name, records_to_table([r for r in train if r["repo_name"] == name]))
    ctx.write("heldout", "heldout", records_to_table(heldout))
    ctx.write("quarantine", "quarantine", quarantine or [], schema=QUARANTINE_SCHEMA)
    return {"manifest": {"records": {"quarantined": len(quarantine), "heldout": len(heldout)}}}


def split_heldout(records: list[dict], eval_sources: set[str], per_source: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): every row of an eval source, and the last ``per_source`` rows of each
    train source (always leaving one row to train on)."""
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(r["repo_name"], []).append(r)
    heldout, train = [], []
    for name, rows in sorted(by_source.items()):
        if name in eval_sources:
            heldout += rows
            continue
        k = min(per_source, max(0, len(rows) - 1))
        train += rows[: len(rows) - k]
        heldout += rows[len(rows) - k :]
    return train, heldout


def _prompts(ctx: Context) -> dict:
    from finr1_core.prompts import build_prompt
    from finr1_core.records import table_to_records

    records = table_to_records(ctx.store.read_stage("records"))
    rows = [prompt_row(r, build_prompt(r, ctx.cfg.prompts)) for r in records]
    size = ctx.cfg.distill.shard_size
    for i in range(0, len(rows), size):
        ctx.write("prompts", f"shard-{i // size:05d}", rows[i : i + size])
    return {}


def prompt_row(record: dict, p: dict) -> dict:
    """One prompt row: the record's identity and gold, plus the rendered messages."""
    return {
        "record_id": record["id"],
        "repo_name": record["repo_name"],
        "language": record.get("language"),
        "module": record.get("module"),
        "question": record["question"],
        "answer": record.get("answer"),
        "answer_type": record.get("answer_type"),
        "math_reasoning": bool(record.get("math_reasoning")),
        "messages": json.dumps(p["messages"], ensure_ascii=False),
        "prefix": p["prefix"],
        "prompt_template_version": p["prompt_template_version"],
        "prompt_hash": p["prompt_hash"],
    }


def prompt_dicts(rows: list[dict]) -> list[dict]:
    """Prompt rows as stored (messages as JSON text) -> dicts with ``messages`` as a list."""
    out = []
    for r in rows:
        d = dict(r)
        if isinstance(d.get("messages"), str):
            d["messages"] = json.loads(d["messages"])
        out.append(d)
    return out


INGEST = Stage(
    name="ingest",
    inputs=(),
    outputs=("records", "heldout", "quarantine"),
    depends=lambda c: (c.data, c.limit),
    body=_ingest,
    doc="sources -> records (one shard per source), heldout, quarantine",
)

PROMPTS = Stage(
    name="prompts",
    inputs=("ingest",),
    outputs=("prompts",),
    depends=lambda c: (c.prompts, c.distill.shard_size),
    body=_prompts,
    doc="records -> prompts, one shard per distill shard",
)
