"""Ingest: sources -> ``records/<source>.parquet`` + ``quarantine/<source>.parquet``.

Layout under an output directory or ``s3://`` URI (written through :class:`finr1_core.storage.Store`,
so each file commits atomically and gets a manifest entry under ``<stage>/_shards/``)::

    <out>/records/<source>.parquet       RECORD_SCHEMA (finr1_core.records)
    <out>/quarantine/<source>.parquet    QUARANTINE_SCHEMA, one row per row not loaded, with reason

Invariant: for every source, rows in == records out + quarantined.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from .config import SourceSpec
from .records import QUARANTINE_SCHEMA, RECORD_SCHEMA, quarantine_to_table, records_to_table
from .sources import SEED_MIX, SOURCES, IngestResult, load_source
from .sources.io import IngestError
from .storage import Store

__all__ = ["IngestError", "ingest", "ingest_to_store", "ingest_sources", "distribution_table", "counts_of", "open_out"]


def open_out(out_uri: str, storage_options: dict | None = None) -> Store:
    """A Store whose base is exactly ``out_uri`` (``Store(out, "")`` -> ``<out>/<stage>/...``)."""
    if not out_uri:
        raise IngestError("--out must be a directory or an s3:// URI")
    return Store(out_uri.rstrip("/"), "", storage_options=storage_options)


def counts_of(source: str, res: IngestResult) -> dict:
    return {
        "source": source,
        "rows_in": res.rows_in,
        "records": len(res.records),
        "quarantined": len(res.quarantine),
        "answer_types": dict(Counter(r["answer_type"] for r in res.records)),
        "quarantine_reasons": dict(Counter(_reason_kind(q["reason"]) for q in res.quarantine)),
        "skipped_files": list(res.skipped_files),
    }


def _reason_kind(reason: str) -> str:
    """Group reasons for summaries: the text before the first ``(`` or ``:``."""
    for sep in (" (", ": "):
        if sep in reason:
            reason = reason.split(sep, 1)[0]
    return reason.strip()


def ingest_to_store(store: Store, source: str, res: IngestResult, cfg_hash: str = "") -> dict:
    """Write one source's records and quarantine as shards ``records/<source>`` and
    ``quarantine/<source>`` of ``store``; returns the counts."""
    rec_t = records_to_table(res.records)
    q_t = quarantine_to_table(res.quarantine)
    counts = counts_of(source, res)
    store.write_shard("records", source, rec_t, cfg_hash=cfg_hash, schema=RECORD_SCHEMA, extra={"rows_in": res.rows_in})
    store.write_shard("quarantine", source, q_t, cfg_hash=cfg_hash, schema=QUARANTINE_SCHEMA, extra={"rows_in": res.rows_in})
    return counts


def ingest(
    source: str,
    path: str | None,
    out_uri: str,
    hub_id: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    storage_options: dict | None = None,
    source_options: dict | None = None,
) -> dict:
    """Load one source (a local path, an ``s3://`` URI or the hub) and write it under ``out_uri``.
    ``storage_options`` are for ``out_uri``, ``source_options`` for ``path`` (both over the
    environment's). Returns the counts."""
    res = load_source(source, path=path, hub_id=hub_id, split=split, limit=limit, storage_options=source_options)
    store = open_out(out_uri, storage_options)
    counts = ingest_to_store(store, source, res)
    counts["records_uri"] = store.uri("records", f"{source}.parquet")
    counts["quarantine_uri"] = store.uri("quarantine", f"{source}.parquet")
    return counts


def ingest_sources(specs: list[SourceSpec], limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Load every spec (path, else hub id, else the registry's hub id); the cap per source is the
    smaller of ``spec.max_rows`` and ``limit`` (None = no cap). Returns (records, quarantine)."""
    records: list[dict] = []
    quarantine: list[dict] = []
    for spec in specs:
        caps = [c for c in (spec.max_rows, limit) if c is not None]
        res = load_source(spec.name, path=spec.path, hub_id=spec.hub_id, split=spec.split, limit=min(caps) if caps else None,
                          storage_options=spec.storage_options or None)
        records.extend(res.records)
        quarantine.extend(res.quarantine)
    return records, quarantine


def distribution_table(records: list[dict], quarantine: list[dict] | None = None, seed: dict[str, int] | None = None) -> str:
    """Markdown table like the Fin-R1 README's composition table: source -> rows (+ quarantined,
    answer-type mix, and the seed's count for reference)."""
    seed = SEED_MIX if seed is None else seed
    by_src: dict[str, Counter] = {}
    for r in records:
        by_src.setdefault(r["repo_name"], Counter())[r["answer_type"]] += 1
    q_by = Counter(q["repo_name"] for q in (quarantine or []))
    names = sorted(set(by_src) | set(q_by), key=lambda n: (list(SOURCES).index(n) if n in SOURCES else 99, n))
    lines = ["| source | rows | quarantined | answer types | Fin-R1 seed rows |", "|---|---:|---:|---|---:|"]
    total = 0
    for n in names:
        c = by_src.get(n, Counter())
        rows = sum(c.values())
        total += rows
        mix = ", ".join(f"{k} {v}" for k, v in c.most_common())
        lines.append(f"| {n} | {rows} | {q_by.get(n, 0)} | {mix} | {seed.get(n, '')} |")
    seed_total = sum(seed[n] for n in names if n in seed)
    lines.append(f"| **total** | **{total}** | **{sum(q_by.values())}** | | {seed_total or ''} |")
    return "\n".join(lines)


def summarize(counts: dict[str, Any]) -> str:
    """One line: ``finqa: 40 in -> 40 records, 0 quarantined``."""
    s = f"{counts['source']}: {counts['rows_in']} in -> {counts['records']} records, {counts['quarantined']} quarantined"
    if counts.get("quarantine_reasons"):
        s += " (" + "; ".join(f"{k}: {v}" for k, v in counts["quarantine_reasons"].items()) + ")"
    return s
