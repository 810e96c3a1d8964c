"""Parquet shard store on any fsspec URI (a local path by default, ``s3://`` through s3fs).

Layout (docs/ARCHITECTURE.md, "Storage")::

    <root>/<run_id>/<stage>/part-00000.parquet      committed shards
    <root>/<run_id>/<stage>/_shards/<shard>.json     one manifest entry per committed shard
    <root>/<run_id>/<stage>/_manifest.json           written once the whole stage is complete
    <root>/<run_id>/<stage>/_tmp/...                 in-flight writes (never read)

A shard commits atomically: it is written under ``_tmp``, moved into place, and only then is its
manifest entry written. A reader lists manifest entries, never bare files, so it never sees a
partial shard. Each entry records the file's size, a fast hash of its bytes (xxh3-64), the sha256
of its bytes and, on object stores, the object's ETag. A shard counts as committed only while its
file is there and matches: the *quick* check (every skip decision, ``finr1 check --quick``)
compares the size and the fast hash (on object stores: size and ETag from one listing, no read),
the *deep* check (``finr1 check``) the sha256. So a lost, truncated or same-size damaged shard is
pending again and the stage re-runs it. Re-runs skip shards whose entry exists with the same
config hash and whose file is intact.
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
import xxhash


def config_hash(obj: Any) -> str:
    """A short stable hash of any JSON-serialisable object (used to tag shards with their config)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def storage_options_from_env(uri: str) -> dict:
    """fsspec options for ``uri``. For s3, honour AWS_ENDPOINT_URL and the standard key variables.

    Never pass ``region_name=us-east-1``: bucket creation then fails with "location-constraint is not valid" (docs/ARCHITECTURE.md, "Storage").
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
    size: int | None = None
    sha256: str | None = None
    xxh3_64: str | None = None
    etag: str | None = None

    def to_json(self) -> dict:
        return self.__dict__.copy()


SHARD_OK, SHARD_MISSING, SHARD_DAMAGED = "ok", "missing", "damaged"
SHARD_FAILED = "failed"  # expected (its input shard is committed) but never committed: failed or never ran


def fast_hash(data: bytes) -> str:
    """The quick check's content hash (xxh3-64, several GB/s): catches same-size damage."""
    return xxhash.xxh3_64_hexdigest(data)


class ShardUnreadable(FileNotFoundError):
    """A committed shard whose file is gone or damaged; the message names it and the repair."""


class Store:
    """One run's view of the storage root: ``<root>/<run_id>/``."""

    def __init__(self, root: str, run_id: str, storage_options: dict | None = None):
        if run_id in (".", "..") or any(c in run_id for c in "/\\\0"):  # one name under the root, never a path out of it
            raise ValueError(f"run id {run_id!r}: must be one name under the storage root, not a path")
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

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return "file" in protocol or "local" in protocol

    def stage_uri(self, stage: str) -> str:
        return self.uri(stage)

    # ---------------------------------------------------------------- raw helpers
    def exists(self, uri: str) -> bool:
        return self.fs.exists(self.fs_path(uri))

    def write_bytes_atomic(self, uri: str, data: bytes) -> str | None:
        """Write to a temporary sibling name, then move into place (rename locally; one PUT on s3).
        Returns the object's ETag on object stores (None locally)."""
        target = self.fs_path(uri)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if self.fs.protocol in ("file", "local") or "file" in (self.fs.protocol or ()):
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            return None
        out = self.fs.pipe_file(target, data)  # object stores: a single PUT is atomic to readers
        return _etag(out)

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self.fs_path(uri))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes_atomic(uri, json.dumps(obj, ensure_ascii=False, indent=2, default=str).encode())

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes_atomic(uri, text.encode())

    # ---------------------------------------------------------------- shards
    def shard_entry(self, stage: str, shard: str) -> dict | None:
        """The shard's index entry, or None when it has none."""
        uri = self.uri(stage, "_shards", f"{shard}.json")
        try:
            return json.loads(self.read_bytes(uri))
        except FileNotFoundError:
            return None

    def shard_status(self, entry: dict, deep: bool = False, sizes: dict[str, dict] | None = None) -> str:
        """``ok``, ``missing`` or ``damaged``: the entry's file exists with the recorded size and
        content. Quick (``deep=False``): the recorded ETag on an object store (no read), else the
        fast hash (xxh3-64) of the bytes. Deep: the sha256 of the bytes. Entries written before
        these were recorded fall back to what they have (sha256, then a readable Parquet footer
        when ``deep``, then existence). ``sizes`` (from :meth:`file_sizes`) saves one request per
        shard when checking a whole stage."""
        p = self.fs_path(self._shard_file(entry))
        if sizes is None:
            if not self.is_local:
                self.fs.invalidate_cache(p)  # another process may have changed it since we listed
            try:
                info = _file_info(self.fs.info(p))
            except FileNotFoundError:
                return SHARD_MISSING
        elif f"{entry['shard']}.parquet" not in sizes:
            return SHARD_MISSING
        else:
            info = sizes[f"{entry['shard']}.parquet"]
        size = entry.get("size")
        if size is not None and info["size"] != int(size):
            return SHARD_DAMAGED
        if not deep and entry.get("etag") and info.get("etag"):
            return SHARD_OK if info["etag"] == entry["etag"] else SHARD_DAMAGED
        if not deep and not (entry.get("xxh3_64") or entry.get("sha256")):
            return SHARD_OK
        data = self.fs.cat_file(p)
        if not deep and entry.get("xxh3_64"):
            return SHARD_OK if fast_hash(data) == entry["xxh3_64"] else SHARD_DAMAGED
        if entry.get("sha256"):
            return SHARD_OK if hashlib.sha256(data).hexdigest() == entry["sha256"] else SHARD_DAMAGED
        try:
            pq.ParquetFile(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError):
            return SHARD_DAMAGED
        return SHARD_OK

    def file_sizes(self, stage: str) -> dict[str, dict]:
        """``{file name: {"size", "etag"}}`` of the files directly in a stage directory (one fresh listing)."""
        d = self.fs_path(self.uri(stage))
        try:
            items = self.fs.ls(d, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {i["name"].rstrip("/").rsplit("/", 1)[-1]: _file_info(i) for i in items if i.get("type") != "directory"}

    def _shard_file(self, entry: dict) -> str:
        """Where the shard lives in this store (the entry's recorded path may be relative to another cwd)."""
        return self.uri(entry.get("stage") or "", f"{entry['shard']}.parquet")

    def shard_committed(self, stage: str, shard: str, cfg_hash: str | None = None, deep: bool = False) -> bool:
        """The shard has an index entry (with ``cfg_hash`` when given) and its file is intact:
        present with the recorded size, and the recorded content hash too when ``deep``."""
        entry = self.shard_entry(stage, shard)
        if entry is None:
            return False
        if cfg_hash is not None and entry.get("config_hash") != cfg_hash:
            return False
        return self.shard_status(entry, deep=deep) == SHARD_OK

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
        data = buf.getvalue()
        path = self.uri(stage, f"{shard}.parquet")
        etag = self.write_bytes_atomic(path, data)
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
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            xxh3_64=fast_hash(data),
            etag=etag,
        )
        self.write_json(self.uri(stage, "_shards", f"{shard}.json"), info.to_json())
        return info

    def begin_stage(self, stage: str) -> None:
        """Mark a sharded stage as started (``_shards/_begun``), so that ``finr1 check`` lists its
        failed shards even when none of them committed."""
        uri = self.uri(stage, "_shards", "_begun")
        if not self.exists(uri):
            self.write_bytes_atomic(uri, datetime.now(timezone.utc).isoformat().encode())

    def shards(self, stage: str) -> list[dict]:
        """Manifest entries of committed shards, sorted by shard name."""
        d = self.fs_path(self.uri(stage, "_shards"))
        if not self.fs.exists(d):
            return []
        out = []
        for p in sorted(self.fs.ls(d, detail=False, refresh=True)):
            if p.endswith(".json"):
                out.append(json.loads(self.fs.cat_file(p)))
        return sorted(out, key=lambda e: e["shard"])

    def read_shard(self, stage: str, shard: str) -> pa.Table:
        """One shard's rows. A missing or unreadable file raises :class:`ShardUnreadable`, whose one
        line names the shard and the repair (a re-run rebuilds it: it no longer counts as committed)."""
        uri = self.uri(stage, f"{shard}.parquet")
        try:
            with self.fs.open(self.fs_path(uri), "rb") as f:
                return pq.read_table(f)
        except FileNotFoundError:
            raise ShardUnreadable(f"{stage}/{shard}: shard file missing ({uri}); {self.repair_hint()}") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise ShardUnreadable(f"{stage}/{shard}: shard file damaged ({type(e).__name__}: {str(e)[:120]}); {self.repair_hint()}") from None

    def repair_hint(self) -> str:
        return f"check with `{self.cli_command('check')}`, repair with `{self.cli_command('retry-failed')}`"

    def cli_command(self, name: str) -> str:
        """``finr1 NAME RUN_ID [--storage ROOT]`` for this run (no --storage for the default root)."""
        return f"finr1 {name} {self.run_id}" + ("" if self.root == "runs" else f" --storage {self.root}")

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

    def stage_complete(self, stage: str, cfg_hash: str, deep: bool = False) -> bool:
        """The stage manifest exists with ``cfg_hash`` and every shard it lists is intact."""
        m = self.stage_manifest(stage)
        if not m or m.get("config_hash") != cfg_hash:
            return False
        sizes = self.file_sizes(stage)
        return all(self.shard_status(e, deep=deep, sizes=sizes) == SHARD_OK for e in m.get("shards", []))

    # ---------------------------------------------------------------- integrity
    def stages(self) -> list[str]:
        """Stages of this run that have shards or a manifest, sorted by name."""
        base = self.fs_path(self.base)
        if not self.fs.exists(base):
            return []
        out = []
        for p in self.fs.ls(base, detail=False, refresh=True):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(("_", ".")):
                continue
            if self.fs.exists(f"{p}/_shards") or self.fs.exists(f"{p}/_manifest.json"):
                out.append(name)
        return sorted(out)

    def verify(self, stage: str, deep: bool = True) -> dict[str, str]:
        """Per shard of ``stage`` (index entries and the stage manifest's list): ok, missing or
        damaged (``deep`` compares content hashes; otherwise sizes only)."""
        entries = {e["shard"]: e for e in (self.stage_manifest(stage) or {}).get("shards", [])}
        entries.update({e["shard"]: e for e in self.shards(stage)})
        sizes = self.file_sizes(stage)
        return {name: self.shard_status(e, deep=deep, sizes=sizes) for name, e in sorted(entries.items())}

    def verify_run(self, deep: bool = True) -> dict[str, dict[str, str]]:
        """:meth:`verify` of every stage of the run."""
        return {st: self.verify(st, deep=deep) for st in self.stages()}


def _etag(info: dict | None) -> str | None:
    """An object's ETag from an fsspec info/put answer (None locally)."""
    if not info:
        return None
    e = info.get("ETag") or info.get("etag")
    return str(e).strip('"') if e else None


def _file_info(info: dict) -> dict:
    return {"size": int(info.get("size") or 0), "etag": _etag(info)}


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


def check_run(store: Store, deep: bool = True, expected: dict[str, list[str]] | None = None) -> tuple[list[str], bool]:
    """Lines describing every stage of the run and its shards (ok, missing, damaged, failed),
    ending with the command that repairs them; and whether the run is whole.

    ``expected``: per stage, the shards it must have (for a sharded stage: one per prompt shard);
    those without a committed entry are listed as ``failed`` (the shard failed or never ran). The
    run is whole when no shard is missing, damaged or failed and every stage is complete."""
    lines, bad, open_stages = [], [], []
    expected = expected or {}
    verified = store.verify_run(deep=deep)
    for stage in sorted(set(verified) | set(expected)):
        status = dict(verified.get(stage, {}))
        for shard in expected.get(stage, []):
            status.setdefault(shard, SHARD_FAILED)
        status = dict(sorted(status.items()))
        kinds = (SHARD_OK, SHARD_MISSING, SHARD_DAMAGED) + ((SHARD_FAILED,) if stage in expected else ())
        counts = {k: sum(1 for v in status.values() if v == k) for k in kinds}
        complete = store.exists(store.uri(stage, "_manifest.json"))
        if not complete:
            open_stages.append(stage)
        state = "complete" if complete else "in progress"
        lines.append(f"{stage}: {len(status)} shard(s), {state}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        for shard, st in status.items():
            if st != SHARD_OK:
                lines.append(f"  {st:<8} {stage}/{shard}")
                bad.append(f"{stage}/{shard}")
    if not lines:
        lines.append(f"run {store.run_id}: no stages under {store.base}")
    repair = store.cli_command("retry-failed")
    failed = sum(1 for b in bad if b.rsplit("/", 1)[0] in expected and verified.get(b.rsplit("/", 1)[0], {}).get(b.rsplit("/", 1)[1]) is None)
    if bad:
        what = "missing, damaged or failed" if failed else "missing or damaged"
        lines.append(f"{len(bad)} shard(s) {what}; repair: {repair}")
    elif open_stages:
        lines.append(f"all shards intact, but not complete: {', '.join(open_stages)}; finish it: {repair}")
    else:
        lines.append("all shards intact")
    return lines, not bad and not open_stages
