"""The normalized record: one row per ingested question, whatever the source.

Every loader in :mod:`finr1_core.sources` turns its upstream rows into this schema. Columns
(``RECORD_SCHEMA``):

``id`` (string)
    Stable id, ``<repo_name>-<16 hex>``: a SHA-256 of the source name and the canonical JSON of
    the upstream row (plus its split). The same row always gets the same id; rows of different
    sources never share one (the source name is both hashed and used as prefix). See
    :func:`make_record_id`.
``repo_name`` (string)
    The source, a key of ``finr1_core.sources.SOURCES`` (``finqa``, ``tfns``, ...).
``split`` (string)
    Upstream split: the row's own ``split`` field, else the ``split`` argument, else a hint from
    the file name (``train``/``dev``/``valid``/``test``/``eval``), else ``train``.
``language`` (string)
    ``zh`` or ``en``.
``question`` (string)
    The full text the model must see (context, table as Markdown, earlier turns, the source's own
    instruction). Options are kept separately in ``choices``; the prompt policy
    (:mod:`finr1_core.prompts`) renders them into the prompt when the text lacks them.
``choices`` (map<string,string>, nullable)
    Option letter -> option text for multiple-choice items, else null.
``answer`` (string)
    The normalized gold answer: option letters sorted and joined (``"DE"``); ``true``/``false``;
    label names (TFNS ``Bearish``/``Bullish``/``Neutral``, FinCUGE ``消极``/``中性``/``积极``, ...);
    numbers as plain decimal strings (``"0.14136"``, ``"10863"``, no exponent); free text and
    code as is.
``answer_raw`` (string)
    The gold answer exactly as the source gave it (non-strings as JSON), before normalization.
``answer_type`` (string)
    One of ``mcq_single``, ``mcq_multi``, ``true_false``, ``numeric``, ``label``, ``free_text``,
    ``code``. It tells the verifier how to compare.
``module`` (string)
    The Fin-R1 task module: ``金融代码`` (code), ``金融专业知识`` (professional/exam knowledge),
    ``金融非推理类业务知识`` (non-reasoning business knowledge), ``金融推理类业务知识``
    (reasoning business knowledge). The rule per source is in ``finr1_core.sources``.
``math_reasoning`` (bool)
    True for financial-math items; it decides the math suffix of the prompt. The rule is in
    ``finr1_core.sources.rules.is_math``.
``meta`` (string)
    JSON object: every field of the upstream row not copied verbatim into the columns above
    (so nothing is lost), plus provenance: ``source_file``, ``row_index`` and loader notes.

Quarantine rows (``QUARANTINE_SCHEMA``): ``repo_name``, ``split``, ``source_file``, ``row_index``
(0-based position of the row in its file), ``reason`` (one line: why it was not loaded) and
``raw`` (the upstream row as a JSON string).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

ANSWER_TYPES = ("mcq_single", "mcq_multi", "true_false", "numeric", "label", "free_text", "code")
MODULES = ("金融代码", "金融专业知识", "金融非推理类业务知识", "金融推理类业务知识")
LANGUAGES = ("zh", "en")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("repo_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("choices", pa.map_(pa.string(), pa.string()), nullable=True),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("answer_raw", pa.string(), nullable=False),
        pa.field("answer_type", pa.string(), nullable=False),
        pa.field("module", pa.string(), nullable=False),
        pa.field("math_reasoning", pa.bool_(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),
    ]
)
RECORD_COLUMNS = tuple(RECORD_SCHEMA.names)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("repo_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
        pa.field("source_file", pa.string(), nullable=True),
        pa.field("row_index", pa.int64(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
    ]
)
QUARANTINE_COLUMNS = tuple(QUARANTINE_SCHEMA.names)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace, non-ASCII kept; NaN -> null)."""
    return json.dumps(_clean(obj), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays / scalars from pandas or datasets
        return _clean(obj.tolist())
    return obj


def make_record_id(repo_name: str, content: Any) -> str:
    """Stable id from the source name and the content (a string or any JSON-serialisable value)."""
    if not isinstance(repo_name, str) or not repo_name:
        raise ValueError("make_record_id: repo_name must be a non-empty string")
    blob = content if isinstance(content, str) else canonical_json(content)
    h = hashlib.sha256(f"{repo_name}\x1f{blob}".encode("utf-8")).hexdigest()
    return f"{repo_name}-{h[:16]}"


def _meta_to_str(meta: Any) -> str:
    if meta is None:
        return "{}"
    if isinstance(meta, str):
        return meta
    return canonical_json(meta)


def _choices_to_items(choices: Any) -> list[tuple[str, str]] | None:
    if choices is None:
        return None
    if isinstance(choices, str):
        choices = json.loads(choices)
    if isinstance(choices, dict):
        return [(str(k), str(v)) for k, v in choices.items()]
    return [(str(k), str(v)) for k, v in choices]  # already a list of pairs


def records_to_table(records: list[dict]) -> pa.Table:
    """Records (``meta`` as dict or JSON string, ``choices`` as dict or None) -> Arrow table."""
    rows = []
    for r in records:
        row = {c: r.get(c) for c in RECORD_COLUMNS}
        row["choices"] = _choices_to_items(r.get("choices"))
        row["meta"] = _meta_to_str(r.get("meta"))
        row["math_reasoning"] = bool(r.get("math_reasoning"))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def table_to_records(table: pa.Table) -> list[dict]:
    """Arrow table -> records with ``choices`` and ``meta`` as Python dicts (the inverse of above)."""
    out = []
    for row in table.to_pylist():
        ch = row.get("choices")
        if ch is not None:
            row["choices"] = dict(ch) if not isinstance(ch, dict) else ch
        meta = row.get("meta")
        row["meta"] = json.loads(meta) if isinstance(meta, str) and meta else (meta or {})
        out.append(row)
    return out


def quarantine_to_table(rows: list[dict]) -> pa.Table:
    clean = []
    for q in rows:
        raw = q.get("raw")
        clean.append(
            {
                "repo_name": q.get("repo_name"),
                "split": q.get("split"),
                "source_file": q.get("source_file"),
                "row_index": q.get("row_index"),
                "reason": q.get("reason"),
                "raw": raw if isinstance(raw, str) else canonical_json(raw),
            }
        )
    return pa.Table.from_pylist(clean, schema=QUARANTINE_SCHEMA)


def validate_record(r: dict) -> str | None:
    """None if ``r`` fits the schema, else a one-line reason (used to quarantine wrong types)."""
    for col in ("id", "repo_name", "split", "language", "question", "answer", "answer_raw", "answer_type", "module"):
        v = r.get(col)
        if not isinstance(v, str):
            return f"wrong type: {col} is {type(v).__name__}, expected text"
    if not r["question"].strip():
        return "no question (empty text)"
    if not r["answer"].strip():
        return "no gold answer (empty)"
    if r["answer_type"] not in ANSWER_TYPES:
        return f"unknown answer_type {r['answer_type']!r}"
    if r["module"] not in MODULES:
        return f"unknown module {r['module']!r}"
    if r["language"] not in LANGUAGES:
        return f"unknown language {r['language']!r}"
    if not isinstance(r.get("math_reasoning"), bool):
        return "wrong type: math_reasoning is not a bool"
    ch = r.get("choices")
    if ch is not None:
        if not isinstance(ch, dict) or not ch:
            return "wrong type: choices must be a non-empty mapping or null"
        for k, v in ch.items():
            if not isinstance(k, str) or not isinstance(v, str):
                return f"wrong type: option {k!r} is {type(v).__name__}, expected text"
    return None
