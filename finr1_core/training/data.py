"""Training data: a released dataset folder, a Parquet path or a hub id -> TRL examples.

- A released folder (``<dir>/data/sft-*.parquet``, ``<dir>/data/rl-*.parquet``, rows with a
  ``conversation`` column) gives its ``sft`` split to SFT, and ``rl`` then ``sft`` to GRPO.
- A Parquet file (or a folder of Parquet files) is read whole.
- Anything else is taken as a hub dataset id (``datasets.load_dataset``).

SFT rows need ``conversation`` (or ``messages``): user turn -> prompt, last assistant turn ->
completion (a column named ``conversation`` fails inside TRL, and ``assistant_only_loss`` fails
with the embedded chat template, so prompt/completion pairs carry the completion-only loss).
GRPO rows need the question (``messages``, ``conversation`` or ``prompt``) and a gold answer
(``answer`` or ``gold``). A row that lacks them is an error naming the row and the field.
"""
from __future__ import annotations

import json
from typing import Sequence

import fsspec
import pyarrow.parquet as pq

from finr1_core.storage import storage_options_from_env


class DataError(ValueError):
    """A training-data problem, always one line naming the field."""


def _fs(uri: str):
    return fsspec.core.url_to_fs(uri, **storage_options_from_env(uri))


def _parquet_rows(fs, paths: list[str]) -> list[dict]:
    rows: list[dict] = []
    for p in sorted(paths):
        with fs.open(p, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def load_rows(uri: str, method: str, split: str | None = None) -> list[dict]:
    """Rows for ``method`` (sft|grpo) from a released folder, a Parquet path or a hub id."""
    if not uri:
        raise DataError("data error: dataset: no training data given (--data or the recipe's dataset)")
    fs, path = _fs(uri)
    if fs.exists(path) and fs.isdir(path):
        splits = [split] if split else (["sft"] if method == "sft" else ["rl", "sft"])
        released = fs.exists(f"{path}/data")
        if released:
            rows = [r for sp in splits for r in _parquet_rows(fs, fs.glob(f"{path}/data/{sp}-*.parquet"))]
        else:
            rows = _parquet_rows(fs, fs.glob(f"{path}/*.parquet") + fs.glob(f"{path}/**/*.parquet"))
        return rows
    if fs.exists(path):
        if not path.endswith(".parquet"):
            raise DataError(f"data error: dataset: {uri} is not a Parquet file or a released dataset folder")
        return _parquet_rows(fs, [path])
    if "://" in uri or uri.startswith(("/", ".")) or uri.count("/") != 1:
        raise DataError(f"data error: dataset: {uri} not found")
    from datasets import load_dataset

    try:
        ds = load_dataset(uri, split=split or "train")
    except Exception as e:  # offline, unknown id, ...
        raise DataError(f"data error: dataset: hub id {uri!r} could not be loaded ({str(e).splitlines()[0][:160]})") from None
    return list(ds)


def _turns(row: dict, i: int, *keys: str) -> list[dict] | None:
    for k in keys:
        v = row.get(k)
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                if k == "prompt":
                    return [{"role": "user", "content": v}]
                raise DataError(f"data error: row {i}: {k}: not a JSON list of messages") from None
        if not isinstance(v, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
            raise DataError(f"data error: row {i}: {k}: expected a list of {{role, content}} messages")
        return [dict(m) for m in v]
    return None


def sft_examples(rows: Sequence[dict]) -> list[dict]:
    """Released rows (``conversation``) -> TRL prompt/completion pairs.

    A conversation with no assistant turn is a question waiting for a trace, not an SFT row: it
    is left out (the release never writes one; counted by the caller as ``rows - examples``).
    """
    out = []
    for i, r in enumerate(rows):
        conv = _turns(r, i, "conversation", "messages")
        if conv is None:
            raise DataError(f"data error: row {i}: conversation: missing (SFT needs a conversation or messages column)")
        user = [m for m in conv if m["role"] == "user"]
        asst = [m for m in conv if m["role"] == "assistant"]
        if not user or not asst:
            continue
        out.append({"prompt": [user[0]], "completion": [asst[-1]]})
    return out


def grpo_examples(rows: Sequence[dict], tokenizer, think_prefix: str = "<think>\n") -> list[dict]:
    """Prompt rows (messages + gold) -> GRPO string prompts ending with the forced prefix.

    The prefix is also a column (``think_prefix``), so the accuracy reward scores ``prefix +
    completion`` as ``finr1 eval`` scores an output."""
    out = []
    for i, r in enumerate(rows):
        msgs = _turns(r, i, "messages", "conversation", "prompt")
        if msgs is None:
            raise DataError(f"data error: row {i}: messages: missing (GRPO needs messages, conversation or prompt)")
        msgs = [m for m in msgs if m["role"] != "assistant"]
        gold = r.get("answer", r.get("gold"))
        if gold is None or str(gold).strip() == "":
            raise DataError(f"data error: row {i}: answer: missing (GRPO needs a gold answer in answer or gold)")
        prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + think_prefix
        out.append({"prompt": prompt, "answer": str(gold), "answer_type": r.get("answer_type"), "think_prefix": think_prefix})
    return out


def write_rows(rows: Sequence[dict], uri: str) -> str:
    """Write rows to one Parquet file (how a pipeline stage hands its rows to the training job)."""
    import pyarrow as pa

    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    clean = [{k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v) for k, v in r.items()} for r in rows]
    with fs.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(clean), f)
    return uri
