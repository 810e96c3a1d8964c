"""Reading upstream files: json (list, dict of lists, wrapped list, or jsonl inside), jsonl, csv,
parquet, arrow, directories of those, and the Hugging Face hub through ``datasets``.

Every path is an fsspec URI: a local path or ``s3://bucket/prefix`` (any fsspec protocol). Options
(``endpoint_url``...) come from ``storage_options``, and for s3 from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``): see :func:`source_fs`.

A file that is not the format its name claims raises :class:`IngestError` with one line naming the
file and the problem. A single bad line inside an otherwise valid jsonl file is not a format
error: it comes back as a :class:`BadRow` and is quarantined.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import fsspec

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet", ".arrow")


class IngestError(ValueError):
    """A whole input is unusable (missing, wrong format, wrong source). Always one line."""

    def __init__(self, msg: str):
        super().__init__(" ".join(str(msg).split()))


@dataclass
class BadRow:
    """A row that could not even be decoded (bad JSON line, non-object row)."""

    raw: Any
    reason: str


@dataclass
class FileRows:
    source_file: str
    rows: list[Any] = field(default_factory=list)  # dicts, lists (FinCUGE positional) or BadRow
    split_hint: str | None = None


_SPLIT_HINTS = (
    ("train", "train"),
    ("validation", "valid"),
    ("valid", "valid"),
    ("dev", "dev"),
    ("eval", "eval"),
    ("problem", "test"),
    ("test", "test"),
)


def split_hint(path: str) -> str | None:
    name = Path(path).name.lower()
    for key, split in _SPLIT_HINTS:
        if key in name:
            return split
    parent = Path(path).parent.name.lower()
    for key, split in _SPLIT_HINTS:
        if parent == key or parent.startswith(key):
            return split
    return None


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _clean_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()
    return v


def source_fs(path: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a source URI. For s3 the environment's endpoint and
    keys come first and ``storage_options`` override them."""
    from ..storage import storage_options_from_env

    opts = {**storage_options_from_env(path), **(storage_options or {})}
    try:
        return fsspec.core.url_to_fs(path, **opts)
    except (ImportError, ValueError) as e:
        raise IngestError(f"{path}: cannot open ({type(e).__name__}: {_first_line(e)})") from None


def _read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    try:
        return fs.cat_file(path)
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({type(e).__name__}: {_first_line(e)})") from None


def _read_text(fs: fsspec.AbstractFileSystem, path: str) -> str:
    try:
        return _read_bytes(fs, path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not a UTF-8 text file ({_first_line(e)})") from None


def _jsonl_rows(path: str, text: str) -> list[Any]:
    rows: list[Any] = []
    ok = 0
    first_err = None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ok += 1
        except json.JSONDecodeError as e:
            first_err = first_err or f"line {i}: {_first_line(e)}"
            rows.append(BadRow({"line_number": i, "text": line}, f"invalid JSON on line {i} ({_first_line(e)})"))
            continue
        rows.append(obj if isinstance(obj, (dict, list)) else BadRow(obj, f"wrong type: row is {type(obj).__name__}, expected a JSON object"))
    if rows and ok == 0:
        raise IngestError(f"{path}: not JSON Lines: no line parses as JSON ({first_err})")
    return rows


def _json_rows(path: str, text: str) -> list[Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        # Many "json" files are JSON Lines; accept them when every line is JSON.
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1:
            try:
                return [json.loads(ln) for ln in lines]
            except json.JSONDecodeError:
                pass
        raise IngestError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        vals = list(obj.values())
        # dict of equal-length lists (columnar export)
        if vals and all(isinstance(v, list) for v in vals) and len({len(v) for v in vals}) == 1 and len(vals) > 1:
            n = len(vals[0])
            return [{k: obj[k][i] for k in obj} for i in range(n)]
        # a wrapper such as {"data": [...]} or {"train": [...]}
        lists = [(k, v) for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            return lists[0][1]
        return [obj]
    raise IngestError(f"{path}: JSON top level is {type(obj).__name__}, expected a list of records or an object")


def _csv_rows(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    import pandas as pd

    try:
        df = pd.read_csv(io.BytesIO(_read_bytes(fs, path)), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not a UTF-8 CSV file ({_first_line(e)})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise IngestError(f"{path}: not a readable CSV file ({_first_line(e)})") from None
    if any("\x00" in str(c) for c in df.columns):
        raise IngestError(f"{path}: not a CSV file (binary content)")
    df.columns = ["_row_index" if str(c).startswith("Unnamed: 0") else str(c) for c in df.columns]
    return df.to_dict("records")


def _parquet_rows(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise IngestError(f"{path}: not a Parquet file ({_first_line(e)})") from None
    return [{k: _clean_value(v) for k, v in r.items()} for r in table.to_pylist()]


def _arrow_rows(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    import pyarrow as pa

    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    try:
        with (pa.memory_map(path) if local else pa.BufferReader(_read_bytes(fs, path))) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                table = pa.ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise IngestError(f"{path}: not an Arrow IPC file ({_first_line(e)})") from None
    return table.to_pylist()


def read_file(path: str, storage_options: dict | None = None) -> FileRows:
    """Rows of one file (a local path or any fsspec URI)."""
    fs, p = source_fs(path, storage_options)
    ext = Path(p).suffix.lower()
    if ext == ".jsonl":
        rows = _jsonl_rows(path, _read_text(fs, p))
    elif ext == ".json":
        rows = _json_rows(path, _read_text(fs, p))
    elif ext == ".csv":
        rows = _csv_rows(fs, p)
    elif ext == ".parquet":
        rows = _parquet_rows(fs, p)
    elif ext == ".arrow":
        rows = _arrow_rows(fs, p)
    else:
        raise IngestError(f"{path}: unsupported file type {ext or '(no extension)'!r} (expected one of {', '.join(SUPPORTED)})")
    return FileRows(source_file=str(path), rows=rows, split_hint=split_hint(str(path)))


def _walk_order(path: str) -> list[tuple[int, str]]:
    """Sort key giving top-down walk order: a directory's files (by name), then its subdirectories."""
    parts = path.split("/")
    return [(1, d) for d in parts[:-1]] + [(0, parts[-1])]


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_files(path: str, storage_options: dict | None = None) -> tuple[list[str], list[str]]:
    """(data files, skipped files) under ``path``: a file, or a directory searched recursively.
    Local paths come back as given; remote ones as URIs with their protocol (``s3://...``)."""
    fs, p = source_fs(path, storage_options)
    try:
        if not fs.exists(p):
            raise IngestError(f"{path}: no such file or directory")
        if fs.isfile(p):
            return [str(path)], []
        found = fs.find(p)
    except OSError as e:
        raise IngestError(f"{path}: cannot list ({type(e).__name__}: {_first_line(e)})") from None
    base, prefix = p.rstrip("/"), str(path).rstrip("/")
    files, skipped = [], []
    for f in sorted(found, key=_walk_order):
        rel = f[len(base):].lstrip("/") if f.startswith(base) else f.rsplit("/", 1)[-1]
        if not rel or _hidden(rel):
            continue
        full = f"{prefix}/{rel}"
        (files if Path(rel).suffix.lower() in SUPPORTED else skipped).append(full)
    if not files:
        raise IngestError(f"{path}: directory holds no data files ({', '.join(SUPPORTED)})")
    return files, skipped


def iter_hub(hub_id: str, split: str | None, limit: int | None = None, **kwargs: Any) -> Iterator[FileRows]:
    """Rows of a Hugging Face dataset (or a packaged builder such as ``json``/``csv``/``parquet``
    with ``data_files=``), one :class:`FileRows` per split."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a core dependency
        raise IngestError(f"hub {hub_id}: the datasets package is not installed ({e})") from None
    try:
        ds = datasets.load_dataset(hub_id, split=split, **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report one line
        raise IngestError(f"hub {hub_id}: cannot load dataset ({type(e).__name__}: {_first_line(e)})") from None
    parts = ds.items() if isinstance(ds, dict) else [(split or "train", ds)]
    left = limit
    for name, d in parts:
        if left is not None:
            if left <= 0:
                break
            d = d.select(range(min(left, len(d))))
            left -= len(d)
        yield FileRows(source_file=f"hf://{hub_id}" + (f"[{name}]" if name else ""), rows=list(d), split_hint=str(name))
