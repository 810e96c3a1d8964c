"""The release's rows: the dataset's name, its splits and Parquet schema, one scored trace turned
into a release row (:func:`release_row`), and the statistics behind the card (:func:`compute_stats`).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any, Sequence

import pyarrow as pa

from ..route import FLAG_REASONS, answer_status

DATASET_NAME = "Financial-R1-Distill-Data"
SPLITS = ("sft", "rl")

_MSG = pa.struct([("role", pa.string()), ("content", pa.string())])
RELEASE_SCHEMA = pa.schema([
    ("repo_name", pa.string()),
    ("conversation", pa.list_(_MSG)),
    ("module", pa.string()),
    ("record_id", pa.string()),
    ("key", pa.string()),
    ("language", pa.string()),
    ("gold", pa.string()),
    ("answer_type", pa.string()),
    ("extracted", pa.string()),
    ("verdict", pa.string()),
    ("verify_reason", pa.string()),
    ("answer_judge", pa.int8()),
    ("answer_judge_version", pa.string()),
    ("reasoning_judge", pa.int8()),
    ("reasoning_judge_version", pa.string()),
    ("route", pa.string()),
    ("route_reason", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("teacher_model", pa.string()),
    ("prompt_template_version", pa.string()),
    ("lineage", pa.string()),
])
_LINEAGE_KEYS = ("source", "record_id", "key", "teacher_model", "model", "endpoint", "sampling", "temperature", "top_p",
                 "max_tokens", "sample_index", "prompt_hash", "prompt_template_version", "template_version", "started_at",
                 "ended_at", "prompt_tokens", "completion_tokens", "finish_reason", "attempts", "run_id", "shard")


def assistant_content(reasoning: str | None, answer: str | None) -> str:
    return f"<think>\n{(reasoning or '').strip()}\n</think>\n\n{(answer or '').strip()}"


def _split_trace(row: dict) -> tuple[str, str]:
    if row.get("reasoning") is not None or row.get("answer") is not None:
        return row.get("reasoning") or "", row.get("answer") or ""
    from ..extract import split_think

    return split_think(row.get("text") or "")


def _s(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (dict, list)) else str(v)


def to_int(v: Any) -> int | None:
    try:
        return None if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return None


def release_row(row: dict) -> dict:
    reasoning, answer = _split_trace(row)
    lineage = {k: row[k] for k in _LINEAGE_KEYS if k in row and row[k] is not None}
    return {
        "repo_name": _s(row.get("repo_name")),
        "conversation": [{"role": "user", "content": str(row.get("question") or "")},
                         {"role": "assistant", "content": assistant_content(reasoning, answer)}],
        "module": _s(row.get("module")),
        "record_id": _s(row.get("record_id")),
        "key": _s(row.get("key")),
        "language": _s(row.get("language")),
        "gold": _s(row.get("gold")),
        "answer_type": _s(row.get("answer_type")),
        "extracted": _s(row.get("extracted")),
        "verdict": _s(row.get("verdict")),
        "verify_reason": _s(row.get("verify_reason")),
        "answer_judge": to_int(row.get("answer_judge")),
        "answer_judge_version": _s(row.get("answer_judge_version")),
        "reasoning_judge": to_int(row.get("reasoning_judge")),
        "reasoning_judge_version": _s(row.get("reasoning_judge_version")),
        "route": _s(row.get("route")),
        "route_reason": _s(row.get("route_reason")),
        "finish_reason": _s(row.get("finish_reason")),
        "prompt_tokens": to_int(row.get("prompt_tokens")),
        "completion_tokens": to_int(row.get("completion_tokens")),
        "teacher_model": _s(row.get("teacher_model") or row.get("model")),
        "prompt_template_version": _s(row.get("prompt_template_version") or row.get("template_version")),
        "lineage": json.dumps(lineage, ensure_ascii=False, default=str, sort_keys=True),
    }


# ----------------------------------------------------------------------------------- statistics
def ratio(a: int, b: int) -> float | None:
    """``a / b`` rounded to 4 places; None when ``b`` is 0."""
    return round(a / b, 4) if b else None


def compute_stats(scored_rows: Sequence[dict], removals: Sequence[dict]) -> dict:
    """Counts per source and per filtering step (the card's tables and the plots come from this)."""
    removed_keys = {str(r.get("key")) for r in removals}
    per_src: dict[str, Counter] = defaultdict(Counter)
    reasons = Counter()
    total = Counter()
    for r in scored_rows:
        src = r.get("repo_name") or "unknown"
        c = per_src[src]
        for cc in (c, total):
            cc["traces"] += 1
        flag = r.get("route_reason") if r.get("route_reason") in FLAG_REASONS else None
        if flag:
            for cc in (c, total):
                cc["flagged"] += 1
        else:
            ok, how = answer_status(r)
            for cc in (c, total):
                cc["round1_in"] += 1
                if ok:
                    cc["round1_pass"] += 1
                    cc[f"round1_pass_{how}"] += 1
                    cc["round2_in"] += 1
                    if r.get("reasoning_judge") == 1:
                        cc["round2_pass"] += 1
                if r.get("verdict") == "unknown":
                    cc["rule_unknown"] += 1
        reasons[r.get("route_reason") or "none"] += 1
        gone = str(r.get("key")) in removed_keys
        for cc in (c, total):
            cc["removed" if gone else f"released_{r.get('route')}"] += 1
    def finish(c: Counter) -> dict:
        d = dict(c)
        d["round1_pass_rate"] = ratio(c["round1_pass"], c["round1_in"])
        d["round2_pass_rate"] = ratio(c["round2_pass"], c["round2_in"])
        d["sft_rate"] = ratio(c["released_sft"], c["traces"])
        return d
    steps = Counter(r.get("step") for r in removals)
    return {
        "total": finish(total),
        "per_source": {k: finish(v) for k, v in sorted(per_src.items())},
        "route_reasons": dict(reasons.most_common()),
        "removals": dict(steps),
        "modules": dict(Counter(r.get("module") or "unknown" for r in scored_rows if str(r.get("key")) not in removed_keys)),
    }

