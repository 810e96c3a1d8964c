"""What a stage is, and the one place that decides whether it runs.

A :class:`Stage` declares its name, the stages it reads (``inputs``), the store stages it writes
(``outputs``), the config fields its result depends on (``depends``), whether it runs once per
shard, and its body. :func:`finr1_core.stages.runner.run_stage` owns the rest: the stage's hash,
skip-if-committed, and marking the outputs complete.

The hash chains: a stage's hash covers its own config fields *and* the hashes of its inputs, so a
changed distill setting changes the hash of distill and of everything downstream of it, and of
nothing upstream (docs/ARCHITECTURE.md, "Stages and hashes").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from finr1_core.config import PipelineConfig
from finr1_core.storage import Store

ProgressCB = Callable[..., None]


@dataclass
class Context:
    """What a stage body gets: the config, the run's store, its own hash and, per call, the shard,
    the managed model server's URL (``None`` for external endpoints) and a progress callback."""

    cfg: PipelineConfig
    store: Store
    hash: str
    shard: str | None = None
    base_url: str | dict | None = None  # a URL, or the managed servers' {engine, urls: {model: url}}
    progress: ProgressCB | None = None
    options: dict = field(default_factory=dict)

    def write(self, output: str, shard: str, rows: Any, **kw):
        """Commit one shard of ``output`` tagged with this stage's hash."""
        return self.store.write_shard(output, shard, rows, cfg_hash=self.hash, **kw)


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    depends: Callable[[PipelineConfig], Any]
    body: Callable[[Context], dict]
    sharded: bool = False
    # ``done(ctx)`` returns the summary of finished work, or None. The default looks at the
    # output manifests (or the shard's index entry); training stages look at their checkpoint.
    done: Callable[[Context], dict | None] | None = None
    # ``False`` for stages that must always run (the report).
    cached: bool = True
    doc: str = ""


def summary(store: Store, stage: str, skipped: bool = False) -> dict:
    """The small JSON-able summary of a stage's committed output."""
    m = store.stage_manifest(stage) or {}
    return {"stage": stage, "rows": m.get("rows", 0), "shards": [e["shard"] for e in m.get("shards", [])], "skipped": skipped, "uri": store.uri(stage)}
