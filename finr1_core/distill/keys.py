"""Request keys, the prompt text that enters them, and the parsing of a teacher's output."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ..llm import chat_messages, get_renderer


def request_key(record_id: str, prompt_text: str, model: str, sampling: dict, sample_index: int) -> str:
    """sha256 of the record id, the rendered prompt, the model, the sampling parameters and the
    sample index. Stable across processes and machines."""
    blob = json.dumps(
        {"record_id": str(record_id), "prompt": prompt_text, "model": model, "sampling": sampling, "sample_index": int(sample_index)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sampling_dict(role_cfg: Any) -> dict:
    """The sampling parameters that define a request (and enter its key)."""
    return {"temperature": float(role_cfg.temperature), "top_p": float(role_cfg.top_p), "max_tokens": int(role_cfg.max_tokens)}


def effective_prefix(prompt: dict, mode: str) -> str:
    """The forced assistant prefix actually sent: none in plain ``chat`` mode."""
    return "" if mode == "chat" else (prompt.get("prefix") or "")


def render_prompt_text(prompt: dict, mode: str, tokenizer_path: str | None) -> str:
    """The rendered prompt that is sent (``completions``) or the canonical JSON of the messages
    (chat modes). This is the ``prompt_text`` of :func:`request_key`."""
    prefix = effective_prefix(prompt, mode)
    if mode == "completions":
        if not tokenizer_path:
            raise ValueError("completions mode needs a tokenizer (teacher.tokenizer or the model directory)")
        return get_renderer(tokenizer_path).render(prompt["messages"], prefix)
    return json.dumps(chat_messages(prompt["messages"], prefix, mode), ensure_ascii=False)


def parse_trace(text: str, prefix: str, finish_reason: str | None) -> dict:
    """Split a teacher output into ``reasoning`` and ``answer`` and flag it (rows are never dropped).

    ``text`` is the completion (what the model generated after ``prefix``); a completion that
    repeats the ``<think>`` opening itself is handled too. Flags: ``truncated`` (finish_reason
    ``length``), ``no_think_close`` (no ``</think>``), ``empty`` (nothing generated).
    """
    text = text or ""
    body = text if text.lstrip().startswith("<think>") else (prefix or "") + text
    empty = not text.strip()
    truncated = finish_reason == "length"
    o = body.find("<think>")
    start = o + len("<think>") if o >= 0 else 0
    c = body.find("</think>", start)
    if c >= 0:
        reasoning, answer = body[start:c].strip(), body[c + len("</think>"):].strip()
    elif o >= 0:
        reasoning, answer = body[start:].strip(), ""
    else:  # no think block at all (plain chat without one)
        reasoning, answer = "", body.strip()
    return {"reasoning": reasoning, "answer": answer, "truncated": truncated, "no_think_close": c < 0, "empty": empty}
