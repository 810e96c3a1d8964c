"""The loader machinery shared by every source: rows in -> records out + quarantine.

Invariant (checked on every call): ``rows_in == len(records) + len(quarantine)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..records import MODULES, make_record_id, validate_record
from .io import BadRow, FileRows, IngestError
from .parse import Skip, detect_lang, is_math

NON_REASONING, REASONING = MODULES[2], MODULES[3]


@dataclass
class RowCtx:
    source: str
    source_file: str
    row_index: int
    split_hint: str | None
    task: str | None = None  # FinCUGE task taken from the file path (positional arrays)


@dataclass
class SourceInfo:
    name: str
    hub_id: str | None
    formats: tuple[str, ...]
    answer_types: tuple[str, ...]
    language: str  # zh, en or auto (detected per record)
    role: str  # train or eval
    licence: str
    module: str  # default module (a loader may set one per record)
    math: bool | None  # True/False for the whole source; None = the rule in parse.is_math
    seed_rows: int | None = None  # Fin-R1-Data composition (production default cap)
    description: str = ""
    expected: str = ""  # the fields that identify this source's layouts (for error messages)
    matches: Callable[[Any], bool] = field(default=lambda row: isinstance(row, dict), repr=False)
    convert: Callable[[Any, RowCtx], dict] | None = field(default=None, repr=False)
    default_split: str = "train"


@dataclass
class IngestResult:
    records: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    rows_in: int = 0
    skipped_files: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict:
        return {"rows_in": self.rows_in, "records": len(self.records), "quarantined": len(self.quarantine)}


def _qrow(source: str, split: str | None, ctx: RowCtx, reason: str, raw: Any) -> dict:
    return {
        "repo_name": source,
        "split": split,
        "source_file": ctx.source_file,
        "row_index": ctx.row_index,
        "reason": reason,
        "raw": json.dumps(raw, ensure_ascii=False, default=str, sort_keys=True),
    }


def _resolve_split(row: Any, split_arg: str | None, hint: str | None, default: str) -> str:
    if isinstance(row, dict):
        s = row.get("split")
        if isinstance(s, str) and s.strip():
            return s.strip()
    return split_arg or hint or default


def build_record(info: SourceInfo, row: Any, ctx: RowCtx, split: str) -> dict:
    """Convert one upstream row (raises Skip with the reason when it cannot be loaded)."""
    part = info.convert(row, ctx)
    question = part["question"]
    answer_type = part["answer_type"]
    choices = part.get("choices")
    lang = part.get("language") or info.language
    if lang == "auto":
        lang = detect_lang(question)
    math = part.get("math_reasoning")
    if math is None:
        math = info.math if info.math is not None else is_math(question, choices, answer_type, part.get("subject", ""))
    module = part.get("module") or info.module
    if math and module == NON_REASONING:
        module = REASONING
    consumed = set(part.get("consumed", ()))
    if isinstance(row, dict):
        meta = {k: v for k, v in row.items() if k not in consumed}
    else:
        meta = {"_raw": row}
    meta.update(part.get("meta") or {})
    meta["provenance"] = {"source_file": ctx.source_file, "row_index": ctx.row_index}
    if ctx.task and "task" not in meta:
        meta["task"] = ctx.task
    id_content = {"row": row, "task": ctx.task} if ctx.task and not isinstance(row, dict) else row
    return {
        "id": make_record_id(info.name, id_content),
        "repo_name": info.name,
        "split": split,
        "language": lang,
        "question": question,
        "choices": choices,
        "answer": part["answer"],
        "answer_raw": part["answer_raw"],
        "answer_type": answer_type,
        "module": module,
        "math_reasoning": bool(math),
        "meta": meta,
    }


def run_loader(
    info: SourceInfo,
    files: Iterable[FileRows],
    split_arg: str | None = None,
    limit: int | None = None,
    task_of: Callable[[str], str | None] | None = None,
) -> IngestResult:
    res = IngestResult()
    seen: dict[str, tuple[str, int]] = {}
    for fr in files:
        if limit is not None and res.rows_in >= limit:
            break
        task = task_of(fr.source_file) if task_of else None
        matched = decodable = 0
        first_keys: Any = None
        for idx, row in enumerate(fr.rows):
            if limit is not None and res.rows_in >= limit:
                break
            res.rows_in += 1
            ctx = RowCtx(info.name, fr.source_file, idx, fr.split_hint, task)
            split = _resolve_split(row, split_arg, fr.split_hint, info.default_split)
            if isinstance(row, BadRow):
                res.quarantine.append(_qrow(info.name, split, ctx, row.reason, row.raw))
                continue
            decodable += 1
            if first_keys is None:
                first_keys = sorted(row)[:12] if isinstance(row, dict) else f"a {type(row).__name__} of {len(row)} items" if isinstance(row, list) else type(row).__name__
            if not info.matches(row) and not (task and isinstance(row, list)):
                kind = f"keys {sorted(row)[:12]}" if isinstance(row, dict) else f"a {type(row).__name__}"
                res.quarantine.append(_qrow(info.name, split, ctx, f"not a {info.name} row: has {kind}, expected {info.expected}", row))
                continue
            matched += 1
            try:
                rec = build_record(info, row, ctx, split)
            except Skip as s:
                res.quarantine.append(_qrow(info.name, split, ctx, s.reason, row))
                continue
            bad = validate_record(rec)
            if bad:
                res.quarantine.append(_qrow(info.name, split, ctx, bad, row))
                continue
            if rec["id"] in seen:
                f0, i0 = seen[rec["id"]]
                res.quarantine.append(_qrow(info.name, split, ctx, f"duplicate of row {i0} of {f0} (same content, id {rec['id']})", row))
                continue
            seen[rec["id"]] = (fr.source_file, idx)
            res.records.append(rec)
        if decodable and not matched:
            raise IngestError(f"{fr.source_file}: not a {info.name} file: no row has the expected fields ({info.expected}); first row has {first_keys}")
    if res.rows_in != len(res.records) + len(res.quarantine):  # never drop silently
        raise RuntimeError(f"ingest invariant broken for {info.name}: {res.rows_in} rows in != {len(res.records)} out + {len(res.quarantine)} quarantined")
    return res
