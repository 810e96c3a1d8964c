"""Prompt rendering: the model's own chat template applied locally (``completions`` mode), and the
message list sent in the chat modes (the forced prefix becomes a final assistant turn)."""
from __future__ import annotations

import functools
import re
import threading
from typing import Sequence

_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n.*?<\|im_end\|>\n?", re.S)
_LLAMA3_SYSTEM = re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>.*?<\|eot_id\|>", re.S)


_IMPORT_LOCK = threading.Lock()


class ChatRenderer:
    """Renders a chat with the model's own template, locally (for ``completions`` mode).

    When the input has no system message, a default system turn injected by the template itself
    (SmolLM2 and Qwen2.5 ChatML templates, Llama 3's date header) is removed: the recipe says no
    system prompt, and the rendered text is what the server receives. A leading BOS token is
    dropped when the tokenizer adds one by itself, so servers that tokenise with special tokens
    do not see it twice.
    """

    def __init__(self, tokenizer_path: str, *, keep_default_system: bool = False):
        # transformers resolves its names lazily; two threads doing so at once raised ImportError
        with _IMPORT_LOCK:
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(tokenizer_path)
        self.keep_default_system = keep_default_system
        bos = getattr(self.tok, "bos_token", None)
        try:
            ids = self.tok("x").input_ids
            self._strip_bos = bool(bos) and bool(ids) and ids[0] == self.tok.bos_token_id
        except Exception:  # pragma: no cover - exotic tokenizers
            self._strip_bos = False
        self._bos = bos or ""

    def render(self, messages: Sequence[dict], prefix: str = "") -> str:
        msgs = list(messages)
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if not self.keep_default_system and not any(m.get("role") == "system" for m in msgs):
            text = _CHATML_SYSTEM.sub("", text, count=1)
            text = _LLAMA3_SYSTEM.sub("", text, count=1)
        if self._strip_bos and self._bos and text.startswith(self._bos):
            text = text[len(self._bos):]
        if prefix and text.endswith(prefix):
            return text  # the template opens the think block itself (DeepSeek-R1's does)
        return text + prefix


@functools.lru_cache(maxsize=8)
def get_renderer(tokenizer_path: str) -> ChatRenderer:
    """One renderer per tokenizer per process (loading a tokenizer costs ~0.5 s)."""
    return ChatRenderer(tokenizer_path)


def chat_messages(messages: Sequence[dict], prefix: str, mode: str) -> list[dict]:
    """The message list actually sent in chat modes (the prefix becomes a final assistant turn)."""
    msgs = [dict(m) for m in messages]
    if mode == "chat-prefill" and prefix:
        msgs.append({"role": "assistant", "content": prefix})
    return msgs


