"""Checkpoints under the run's output (local or ``s3://``) and resume from the last complete one.

The trainer always writes into a local folder. For a remote output (``s3://...``) that folder is
a staging copy under ``$FINR1_HOME/train/``: complete checkpoints are pulled from the remote
before training, and each new checkpoint is pushed with fsspec as soon as it is saved.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import fsspec

from finr1_core.config import finr1_home
from finr1_core.storage import storage_options_from_env

_CKPT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "trainer_state.json"  # the Trainer writes it last in a checkpoint


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_dir(output_uri: str) -> Path:
    """Where the trainer writes: the output itself, or a staging folder for a remote output."""
    if not is_remote(output_uri):
        return Path(output_uri.removeprefix("file://")).expanduser().resolve()
    key = hashlib.sha256(output_uri.encode()).hexdigest()[:16]
    return finr1_home() / "train" / key


def complete_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; a half-written one is skipped."""
    d = Path(folder)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARK).exists() and any(p.glob("*.safetensors")):
            out.append((int(m.group(1)), p))
    return sorted(out)


def last_checkpoint(folder: str | Path) -> Path | None:
    ck = complete_checkpoints(folder)
    return ck[-1][1] if ck else None


def _fs(uri: str):
    return fsspec.core.url_to_fs(uri, **storage_options_from_env(uri))


def pull_checkpoints(output_uri: str, dest: Path) -> Path | None:
    """Copy the last complete remote checkpoint into the staging folder; return the local last one."""
    if is_remote(output_uri):
        fs, root = _fs(output_uri)
        steps = []
        for p in fs.glob(f"{root}/checkpoint-*/{COMPLETE_MARK}"):
            m = _CKPT.match(p.rsplit("/", 2)[-2])
            if m:
                steps.append((int(m.group(1)), p.rsplit("/", 1)[0]))
        if steps:
            step, remote = max(steps)
            target = dest / f"checkpoint-{step}"
            if not (target / COMPLETE_MARK).exists():
                target.mkdir(parents=True, exist_ok=True)
                fs.get(remote + "/", str(target) + "/", recursive=True)
    return last_checkpoint(dest)


def push(local: Path, output_uri: str, name: str | None = None) -> None:
    """Upload a local folder (a checkpoint, or the whole output when ``name`` is None).

    ``trainer_state.json`` goes last, so a remote checkpoint is complete exactly when it is there.
    """
    if not is_remote(output_uri):
        return
    fs, root = _fs(output_uri)
    target = f"{root}/{name}" if name else root
    files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: p.name == COMPLETE_MARK)
    for f in files:
        dst = f"{target}/{f.relative_to(local).as_posix()}"
        fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(f), dst)
