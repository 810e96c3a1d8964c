"""Prompt policy: how a record becomes the messages sent to a model.

- No system message: one ``user`` message holding the record's ``question``.
- Options (``choices``) are rendered into the text (``A. ...`` one per line) unless the question
  already lists them (every letter appears at a line start as ``A、`` / ``A:`` / ``A.`` ...).
- ``math_reasoning`` items get ``cfg.math_suffix_zh`` or ``cfg.math_suffix_en`` (by the record's
  language), unless the source's own instruction already asks for ``\\boxed{}`` (FinCorpus
  "…放在boxed{}中", Ant "把最终答案放入\\boxed{}"): that request is not doubled.
- The forced assistant prefix is ``cfg.think_prefix`` (``<think>\\n``).
- Every prompt carries ``prompt_template_version`` and ``prompt_hash`` (a hash of the version,
  messages and prefix), so any stored trace can be traced to the exact prompt.
"""
from __future__ import annotations

import hashlib
import json
import re

from .config import PromptConfig

PROMPT_TEMPLATE_VERSION = "finr1-prompt-v1"

_BOXED = re.compile(r"boxed", re.I)


def asks_for_boxed(text: str) -> bool:
    """True when the text already asks for the answer in ``\\boxed{}`` (or ``boxed{}``)."""
    return bool(_BOXED.search(text or ""))


def _lists_choices(question: str, choices: dict[str, str]) -> bool:
    for letter in choices:
        if not re.search(rf"(?m)^\s*\(?{re.escape(letter)}\s*[、.．:：)）]", question):
            return False
    return True


def render_choices(choices: dict[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in sorted(choices.items()))


def build_prompt(record: dict, cfg: PromptConfig | None = None) -> dict:
    """``{messages, prefix, prompt_template_version, prompt_hash}`` for one record."""
    cfg = cfg or PromptConfig()
    question = str(record.get("question") or "").strip()
    if not question:
        raise ValueError(f"record {record.get('id')!r} has no question")
    text = question
    choices = record.get("choices")
    if isinstance(choices, str):
        choices = json.loads(choices)
    if choices and not isinstance(choices, dict):
        choices = dict(choices)
    if choices and not _lists_choices(question, choices):
        text = f"{text}\n{render_choices(choices)}"
    if record.get("math_reasoning") and not asks_for_boxed(text):
        suffix = cfg.math_suffix_zh if record.get("language") == "zh" else cfg.math_suffix_en
        if suffix:
            text = f"{text}\n{suffix}" if record.get("language") == "zh" else f"{text}\n\n{suffix}"
    messages = [{"role": "user", "content": text}]
    blob = json.dumps({"v": PROMPT_TEMPLATE_VERSION, "m": messages, "p": cfg.think_prefix}, ensure_ascii=False, sort_keys=True)
    return {
        "messages": messages,
        "prefix": cfg.think_prefix,
        "prompt_template_version": PROMPT_TEMPLATE_VERSION,
        "prompt_hash": hashlib.sha256(blob.encode()).hexdigest()[:16],
    }
