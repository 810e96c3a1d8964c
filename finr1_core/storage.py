"""Parquet shard store on any fsspec URI (a local path by default, ``s3://`` through s3fs).

Layout (DESIGN.md section 1)::

    <root>/<run_id>/<stage>/part-00000.parquet      committed shards
    <root>/<run_id>/<stage>/_shards/<shard>.json     one manifest entry per committed shard
    <root>/<run_id>/<stage>/_manifest.json           written once the whole stage is complete
    <root>/<run_id>/<stage>/_tmp/...                 in-flight writes (never read)

A shard commits atomically: it is written under ``_tmp``, moved into place, and only then is its
manifest entry written. A reader lists manifest entries, never bare files, so it never sees a
partial shard. Re-runs skip shards whose entry exists with the same config hash.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def config_hash(obj: Any) -> str:
    """A short stable hash of any JSON-serialisable object (used to tag shards with their config)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def storage_options_from_env(uri: str) -> dict:
    """fsspec options for ``uri``. For s3, honour AWS_ENDPOINT_URL and the standard key variables.

    Never pass ``region_name=us-east-1``: bucket creation then fails (DESIGN.md section 3).
    """
    if not uri.startswith("s3://"):
        return {}
    opts: dict = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        opts["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        opts["secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    return opts


def join(*parts: str) -> str:
    head, *rest = parts
    out = head.rstrip("/")
    for p in rest:
        out += "/" + str(p).strip("/")
    return out


@dataclass
class ShardInfo:
    stage: str
    shard: str
    path: str
    rows: int
    config_hash: str
    source_shards: list[str]
    schema: list[str]
    extra: dict
    committed_at: str

    def to_json(self) -> dict:
        return self.__dict__.copy()


class Store:
    """One run's view of the storage root: ``<root>/<run_id>/``."""

    def __init__(self, root: str, run_id: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.run_id = run_id
        opts = storage_options if storage_options is not None else storage_options_from_env(root)
        self.storage_options = opts
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **opts)
        self.base = join(self.root, run_id)

    # ---------------------------------------------------------------- paths
    def uri(self, *parts: str) -> str:
        return join(self.base, *parts)

    def fs_path(self, uri: str) -> str:
        """Filesystem path (no protocol) of ``uri``, for calls on ``self.fs``."""
        return self.fs._strip_protocol(uri)

    _p = fs_path

    @property
    def is_local(self) -> bool:
        return self.fs.protocol in ("file", "local") or "file" in (self.fs.protocol or ())

    def stage_uri(self, stage: str) -> str:
        return self.uri(stage)

    # ---------------------------------------------------------------- raw helpers
    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._p(uri))

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write to a temporary sibling name, then move into place (rename locally; one PUT on s3)."""
        target = self._p(uri)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.fs.protocol in ("file", "local") or "file" in (self.fs.protocol or ()):
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:  # object stores: a single PUT is atomic to readers
            self.fs.pipe_file(target, data)

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self._p(uri))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes_atomic(uri, json.dumps(obj, ensure_ascii=False, indent=2, default=str).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes_atomic(uri, text.encode())

    # ---------------------------------------------------------------- shards
    def shard_committed(self, stage: str, shard: str, cfg_hash: str | None = None) -> bool:
        entry = self.uri(stage, "_shards", f"{shard}.json")
        if not self.exists(entry):
            return False
        if cfg_hash is None:
            return True
        return self.read_json(entry).get("config_hash") == cfg_hash

    def write_shard(
        self,
        stage: str,
        shard: str,
        table: pa.Table | Iterable[dict] | Any,
        *,
        cfg_hash: str = "",
        source_shards: list[str] | None = None,
        schema: pa.Schema | None = None,
        extra: dict | None = None,
    ) -> ShardInfo:
        """Commit one shard atomically and record it in the stage manifest."""
        table = to_table(table, schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        path = self.uri(stage, f"{shard}.parquet")
        self.write_bytes_atomic(path, buf.getvalue())
        info = ShardInfo(
            stage=stage,
            shard=shard,
            path=path,
            rows=table.num_rows,
            config_hash=cfg_hash,
            source_shards=list(source_shards or []),
            schema=[f"{f.name}: {f.type}" for f in table.schema],
            extra=extra or {},
            committed_at=datetime.now(timezone.utc).isoformat(),
        )
        self.write_json(self.uri(stage, "_shards", f"{shard}.json"), info.to_json())
        return info

    def shards(self, stage: str) -> list[dict]:
        """Manifest entries of committed shards, sorted by shard name."""
        d = self._p(self.uri(stage, "_shards"))
        if not self.fs.exists(d):
            return []
        out = []
        for p in sorted(self.fs.ls(d, detail=False)):
            if p.endswith(".json"):
                out.append(json.loads(self.fs.cat_file(p)))
        return sorted(out, key=lambda e: e["shard"])

    def read_shard(self, stage: str, shard: str) -> pa.Table:
        with self.fs.open(self._p(self.uri(stage, f"{shard}.parquet")), "rb") as f:
            return pq.read_table(f)

    def read_stage(self, stage: str, shards: list[str] | None = None) -> pa.Table:
        """All committed shards of a stage concatenated (an empty table if there are none)."""
        names = [e["shard"] for e in self.shards(stage)]
        if shards is not None:
            names = [n for n in names if n in set(shards)]
        tables = [self.read_shard(stage, n) for n in names]
        tables = [t for t in tables if t.num_rows or t.num_columns]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive")

    def read_rows(self, stage: str) -> list[dict]:
        return self.read_stage(stage).to_pylist()

    # ---------------------------------------------------------------- stage manifest
    def complete_stage(self, stage: str, cfg_hash: str, extra: dict | None = None) -> dict:
        entries = self.shards(stage)
        manifest = {
            "stage": stage,
            "run_id": self.run_id,
            "config_hash": cfg_hash,
            "rows": sum(e["rows"] for e in entries),
            "shards": entries,
            "completed_at": datetime.now(timezone.utc).isoformat(),
            **(extra or {}),
        }
        self.write_json(self.uri(stage, "_manifest.json"), manifest)
        return manifest

    def stage_manifest(self, stage: str) -> dict | None:
        uri = self.uri(stage, "_manifest.json")
        return self.read_json(uri) if self.exists(uri) else None

    def stage_complete(self, stage: str, cfg_hash: str) -> bool:
        m = self.stage_manifest(stage)
        return bool(m) and m.get("config_hash") == cfg_hash


def to_table(rows: Any, schema: pa.Schema | None = None) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows if schema is None else rows.cast(schema)
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        return pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    rows = list(rows)
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    if not rows:
        return pa.table({})
    return pa.Table.from_pylist(rows)
