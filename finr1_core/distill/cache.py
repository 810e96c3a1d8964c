"""The durable response cache: one small JSON object per completed response.

Layout: ``<storage_root>/_cache/responses/<key[:2]>/<key>.json`` (local or any fsspec URI).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from typing import Sequence

import fsspec

from ..storage import join


def response_cache_root(storage_root: str) -> str:
    """``<storage_root>/_cache/responses`` (idempotent: a path already ending so is returned as is)."""
    r = storage_root.rstrip("/")
    return r if r.endswith("/_cache/responses") else join(r, "_cache", "responses")


class ResponseCache:
    """One small JSON object per completed response: ``<root>/<key[:2]>/<key>.json``.

    Writes are atomic (temporary name + rename locally; one PUT on object stores), so a reader
    sees a whole record or none. Works on any fsspec URI.
    """

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, _ = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,))
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def uri(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.json"

    def _path(self, key: str) -> str:
        return self.fs._strip_protocol(self.uri(key))

    def put(self, record: dict) -> None:
        key = record["key"]
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        if self.local:
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                with self._lock:
                    self._dirs.add(parent)
            tmp = f"{parent}/.tmp-{key}-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # durable before the shard that needs it is written
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a full disk leaves no partial file behind
                raise
        else:
            self.fs.pipe_file(path, data)

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """Cached records for those keys that have one (a bad or foreign record counts as missing)."""
        keys = list(keys)
        if not keys:
            return {}
        out: dict[str, dict] = {}
        if self.local:
            for k in keys:
                try:
                    with open(self._path(k), "rb") as f:
                        raw = f.read()
                except FileNotFoundError:
                    continue
                rec = _load_record(raw, k)
                if rec is not None:
                    out[k] = rec
            return out
        paths = {self._path(k): k for k in keys}
        got = self.fs.cat(list(paths), on_error="omit")
        for p, raw in got.items():
            k = paths.get(p) or paths.get(self.fs._strip_protocol(p))
            if k is None or isinstance(raw, Exception):
                continue
            rec = _load_record(raw, k)
            if rec is not None:
                out[k] = rec
        return out

    def keys(self) -> set[str]:
        """Every key in the cache (tests and tools; a production cache is large)."""
        base = self.fs._strip_protocol(self.root)
        if not self.fs.exists(base):
            return set()
        return {p.rsplit("/", 1)[1][:-5] for p in self.fs.find(base) if p.endswith(".json") and "/.tmp-" not in p}


def _load_record(raw: bytes, key: str) -> dict | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("key") != key or "text" not in rec:
        return None
    return rec
