"""Publishing a directory of files all at once, on a local path or any fsspec URI.

Two ways, both "write everything first, make it visible last":

- :func:`publish_tree` makes ``out_uri`` hold a new set of files. Locally the files are written to
  a hidden sibling directory, which is then renamed into place (the old directory is renamed away
  first and deleted after): a reader sees the old tree or the new one, never a mix, and a kill
  mid-write leaves only the hidden directory behind. On object stores (no rename) each file is one
  PUT and ``_COMMITTED.json``, listing every file, is written last: readers check it with
  :func:`committed`.
- :func:`publish_version` writes the files under ``<base>/versions/<version>/`` and then writes the
  pointer ``<base>/<pointer>`` (one atomic write) naming that version; readers go through
  :func:`read_pointer`. Older versions are pruned after the pointer moved (the newest ``keep`` stay,
  so a reader that resolved the previous pointer can still finish).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from typing import Any

import fsspec

from .storage import join, storage_options_from_env

COMMITTED = "_COMMITTED.json"


def fs_for(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    opts = storage_options if storage_options is not None else storage_options_from_env(uri)
    return fsspec.core.url_to_fs(uri, **opts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protos or "local" in protos


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """One file, all at once: a temporary sibling renamed into place locally, one PUT elsewhere."""
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _write_all(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, bytes]) -> None:
    for rel, data in sorted(files.items()):
        p = join(root, rel)
        if is_local(fs):
            os.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        else:
            fs.pipe_file(p, data)


def publish_tree(files: dict[str, bytes], out_uri: str, storage_options: dict | None = None) -> None:
    """Make ``out_uri`` hold ``files`` (relative path -> bytes) all at once (see the module doc)."""
    fs, root = fs_for(out_uri, storage_options)
    root = root.rstrip("/")
    if not is_local(fs):
        _write_all(fs, root, files)
        listing = {"files": sorted(files), "committed_at": datetime.now(timezone.utc).isoformat()}
        fs.pipe_file(join(root, COMMITTED), json.dumps(listing, indent=2).encode())
        return
    parent, name = os.path.split(root)
    os.makedirs(parent or ".", exist_ok=True)
    stage = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    _write_all(fs, stage, {**files, COMMITTED: json.dumps({"files": sorted(files)}).encode()})
    old = None
    if os.path.exists(root):
        old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex}")
        os.rename(root, old)
    os.rename(stage, root)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def committed(uri: str, storage_options: dict | None = None) -> bool:
    """Whether ``uri`` holds a complete tree written by :func:`publish_tree`."""
    fs, root = fs_for(uri, storage_options)
    return fs.exists(join(root, COMMITTED))


def read_tree(uri: str, storage_options: dict | None = None) -> dict[str, bytes]:
    """Every file under ``uri`` (relative path -> bytes), hidden files and the commit marker excepted."""
    fs, root = fs_for(uri, storage_options)
    root = root.rstrip("/")
    out = {}
    for p in sorted(fs.find(root)):
        rel = p[len(root):].lstrip("/")
        if rel and rel != COMMITTED and not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = fs.cat_file(p)
    return out


def read_pointer(base_uri: str, pointer: str, storage_options: dict | None = None) -> dict | None:
    fs, root = fs_for(base_uri, storage_options)
    p = join(root, pointer)
    return json.loads(fs.cat_file(p)) if fs.exists(p) else None


def publish_version(files: dict[str, bytes], base_uri: str, version: str, pointer: str, *,
                    info: dict[str, Any] | None = None, storage_options: dict | None = None, keep: int = 3) -> dict:
    """Write ``files`` under ``<base>/versions/<version>/``, then point ``<base>/<pointer>`` at it.
    Returns the pointer document (``version``, ``uri``, ``files`` plus ``info``)."""
    fs, root = fs_for(base_uri, storage_options)
    root = root.rstrip("/")
    vroot = join(root, "versions", version)
    _write_all(fs, vroot, files)
    doc = {**(info or {}), "version": version, "uri": join(base_uri, "versions", version), "files": len(files),
           "published_at": datetime.now(timezone.utc).isoformat()}
    write_atomic(fs, join(root, pointer), json.dumps(doc, ensure_ascii=False, indent=2, default=str).encode())
    _prune(fs, join(root, "versions"), version, keep)
    return doc


def _prune(fs: fsspec.AbstractFileSystem, versions_dir: str, current: str, keep: int) -> None:
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(versions_dir, detail=False))
    for n in [n for n in names if n != current][: max(0, len(names) - keep)]:
        fs.rm(join(versions_dir, n), recursive=True)
