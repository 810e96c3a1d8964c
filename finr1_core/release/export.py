"""Where a finished release goes, each step all at once (:mod:`finr1_core.publish`):

- :func:`release_dataset` writes the release directory (Parquet splits, card, plots, stats) under
  any fsspec URI;
- :func:`refresh_latest` copies a run's release to a new version under ``<storage_root>/_release/``
  and then moves the pointer ``_release/latest.json`` to it; :func:`resolve_latest` reads it;
- :func:`push_release` publishes a release directory as a Hugging Face dataset.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..publish import committed, publish_tree, publish_version, read_pointer, read_tree
from ..storage import join
from .card import build_card, distribution_table, licence_notes, plots
from .rows import DATASET_NAME, RELEASE_SCHEMA, SPLITS, compute_stats, release_row

LATEST_DIR = "_release"
LATEST_POINTER = "latest.json"


class ReleaseError(ValueError):
    """A release that cannot be published or found; always one line."""


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), buf, compression="zstd")
    else:  # no row group at all: `datasets` rejects a Parquet file with one empty row group
        pq.ParquetWriter(buf, RELEASE_SCHEMA, compression="zstd").close()
    return buf.getvalue()


def release_dataset(scored_rows: Sequence[dict], out_uri: str, *, removals: Iterable[dict] = (),
                    name: str = DATASET_NAME, storage_options: dict | None = None, card_extra: str | None = None) -> dict:
    """Write the release under ``out_uri`` (local path or ``s3://``), all files at once
    (:func:`finr1_core.publish.publish_tree`). Returns a summary dict with the split counts, file
    URIs and the stats behind the card."""
    removals = list(removals)
    removed_keys = {str(r.get("key")) for r in removals}
    splits: dict[str, list[dict]] = {sp: [] for sp in SPLITS}
    for r in scored_rows:
        if str(r.get("key")) in removed_keys:
            continue
        rr = release_row(r)
        splits["sft" if rr["route"] == "sft" else "rl"].append(rr)
    stats = compute_stats(scored_rows, removals)
    blobs: dict[str, bytes] = {f"data/{sp}-00000-of-00001.parquet": _parquet(rows) for sp, rows in splits.items()}
    blobs.update({f"plots/{pname}": png for pname, png in plots(stats, scored_rows).items()})

    def versions(col: str) -> list[str]:
        return sorted({str(r.get(col)) for r in scored_rows if r.get(col)})

    card = build_card(name, stats, splits, removals,
                      judge_versions={"answer": versions("answer_judge_version"), "reasoning": versions("reasoning_judge_version")},
                      prompt_versions=sorted(set(versions("prompt_template_version")) | set(versions("template_version"))),
                      teacher_models=sorted(set(versions("teacher_model")) | set(versions("model"))), extra=card_extra,
                      num_bytes={sp: len(blobs[f"data/{sp}-00000-of-00001.parquet"]) for sp in SPLITS})
    blobs["README.md"] = card.encode()
    blobs["distribution.md"] = (distribution_table(splits) + "\n").encode()
    blobs["LICENSE-NOTES.md"] = licence_notes(list(stats["per_source"])).encode()
    blobs["removals.jsonl"] = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in removals).encode()
    blobs["stats.json"] = json.dumps(stats, ensure_ascii=False, indent=2, default=str).encode()
    publish_tree(blobs, out_uri, storage_options)
    files = {sp: join(out_uri, "data", f"{sp}-00000-of-00001.parquet") for sp in SPLITS}
    files.update({k.split("/", 1)[1]: join(out_uri, k) for k in blobs if k.startswith("plots/")})
    files.update(card=join(out_uri, "README.md"), distribution=join(out_uri, "distribution.md"),
                 removals=join(out_uri, "removals.jsonl"), stats=join(out_uri, "stats.json"))
    return {"name": name, "uri": out_uri, "counts": {k: len(v) for k, v in splits.items()}, "files": files, "stats": stats}


def refresh_latest(storage_root: str, run_id: str, *, release_uri: str | None = None, storage_options: dict | None = None,
                   info: dict | None = None, keep: int = 3) -> dict:
    """Publish run ``run_id``'s release as the latest one, atomically: its files are copied to
    ``<storage_root>/_release/versions/<UTC stamp>-<run_id>/`` and only then is
    ``<storage_root>/_release/latest.json`` rewritten to point there. A reader that resolves the
    pointer (:func:`resolve_latest`) always gets a complete release; a refresh killed mid-copy
    leaves the previous one in place. Returns the pointer (``run_id``, ``version``, ``uri``,
    ``release``, ``files``, ``published_at`` and ``info``)."""
    src = release_uri or join(storage_root, run_id, "release")
    try:
        complete = committed(src, storage_options)
        files = read_tree(src, storage_options) if complete else {}
    except OSError as e:
        raise ReleaseError(f"release {src}: cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not complete or "README.md" not in files:
        raise ReleaseError(f"run {run_id} has no complete release at {src}")
    version = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{run_id}"
    return publish_version(files, join(storage_root, LATEST_DIR), version, LATEST_POINTER,
                           info={"run_id": run_id, "release": src, **(info or {})}, storage_options=storage_options, keep=keep)


def resolve_latest(storage_root: str, storage_options: dict | None = None) -> dict | None:
    """The latest-release pointer (its ``uri`` is a complete release directory), or None."""
    return read_pointer(join(storage_root, LATEST_DIR), LATEST_POINTER, storage_options)


def push_release(release_uri: str, repo_id: str, *, token: str | None = None, private: bool = False,
                 storage_options: dict | None = None, timeout_s: float = 20.0, log=print) -> str:
    """Publish a complete release directory (local or ``s3://``) as the Hugging Face dataset
    ``repo_id`` through ``huggingface_hub`` (the card's metadata is checked as ``DatasetCardData``
    first). The token comes from ``token`` or ``HF_TOKEN``; each HTTP call gives up after
    ``timeout_s``. Every failure is a :class:`ReleaseError` with one line. Returns the dataset URL."""
    from huggingface_hub import DatasetCard, HfApi, constants, get_session

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise ReleaseError("release push: HF_TOKEN is not set (a Hugging Face write token is needed)")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ReleaseError(f"release push: --repo must be ORG/NAME (got {repo_id!r})")
    if constants.is_offline_mode():
        raise ReleaseError("release push: HF_HUB_OFFLINE is set; unset it to publish")
    if not committed(release_uri, storage_options):
        raise ReleaseError(f"release push: no complete release at {release_uri}")
    files = read_tree(release_uri, storage_options)
    card = DatasetCard(files["README.md"].decode())
    if not card.data.get("configs") or not card.data.get("dataset_info"):
        raise ReleaseError(f"release push: {release_uri}/README.md has no configs/dataset_info metadata")
    get_session().timeout = timeout_s
    api = HfApi(token=token, endpoint=constants.ENDPOINT)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="finr1-push-") as d:
            for rel, data in files.items():
                (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(d) / rel).write_bytes(data)
            api.upload_folder(folder_path=d, repo_id=repo_id, repo_type="dataset",
                              commit_message=f"finr1 release ({card.data.get('pretty_name') or DATASET_NAME})")
    except Exception as e:  # noqa: BLE001 - network, auth and hub errors all become one line
        msg = " ".join(str(e).split())[:240] or type(e).__name__
        raise ReleaseError(f"release push to {constants.ENDPOINT}/datasets/{repo_id} failed: {type(e).__name__}: {msg}") from None
    log(f"pushed {len(files)} files to {url}")
    return str(url)

