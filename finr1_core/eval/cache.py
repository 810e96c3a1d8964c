"""Per-row result cache under the eval's output URI (local path or ``s3://``).

Layout::

    <out>/rows/<model>-<target hash>/<benchmark>/part-<uuid>.parquet

Every row carries ``cache_key`` = hash of (target identity, benchmark, row id, sample index,
sampling, prefix). Parts are written atomically every ``flush_every`` rows and at the end, so a
killed run loses at most one unflushed batch and a re-run evaluates only what is missing. Rows
whose request failed are kept (and shown) but are retried by the next run; the newest part wins.
"""
from __future__ import annotations

import io
import json
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from finr1_core.storage import config_hash, join, storage_options_from_env


def cache_key(identity: str, benchmark: str, row_id: str, sample: int, sampling: dict, prefix: str) -> str:
    return config_hash({"t": identity, "b": benchmark, "r": row_id, "s": sample, "p": sampling, "x": prefix})


class ResultCache:
    def __init__(self, out_uri: str, flush_every: int = 8):
        self.out = out_uri.rstrip("/")
        self.fs, _ = fsspec.core.url_to_fs(self.out, **storage_options_from_env(self.out))
        self.flush_every = max(1, flush_every)
        self._buf: dict[tuple[str, str], list[dict]] = {}

    def _dir(self, model_dir: str, benchmark: str) -> str:
        return join(self.out, "rows", model_dir, benchmark)

    def _path(self, uri: str) -> str:
        return self.fs._strip_protocol(uri)

    def load(self, model_dir: str, benchmark: str) -> dict[str, dict]:
        """cache_key -> row, newest part last (parts are named by write time)."""
        d = self._path(self._dir(model_dir, benchmark))
        if not self.fs.exists(d):
            return {}
        parts = sorted((p for p in self.fs.ls(d, detail=False) if p.endswith(".parquet")))
        out: dict[str, dict] = {}
        for p in parts:
            with self.fs.open(p, "rb") as f:
                for r in pq.read_table(f).to_pylist():
                    out[r["cache_key"]] = r
        return out

    def add(self, model_dir: str, benchmark: str, row: dict) -> None:
        buf = self._buf.setdefault((model_dir, benchmark), [])
        buf.append(row)
        if len(buf) >= self.flush_every:
            self.flush(model_dir, benchmark)

    def flush(self, model_dir: str | None = None, benchmark: str | None = None) -> None:
        keys = [(model_dir, benchmark)] if model_dir else list(self._buf)
        for k in keys:
            rows = self._buf.pop(k, [])
            if rows:
                self._write(*k, rows)

    def _write(self, model_dir: str, benchmark: str, rows: list[dict]) -> None:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
        name = f"part-{_stamp()}-{uuid.uuid4().hex[:8]}.parquet"
        write_atomic(self.fs, self._path(join(self._dir(model_dir, benchmark), name)), buf.getvalue())


def _stamp() -> str:
    import time

    return f"{time.time_ns():020d}"


def write_atomic(fs, path: str, data: bytes) -> None:
    """Local: write a hidden temporary sibling, then rename. Object stores: one PUT."""
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)):
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(fs, path: str, obj) -> None:
    write_atomic(fs, path, json.dumps(obj, ensure_ascii=False, indent=2, default=str).encode())
