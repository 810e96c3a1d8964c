"""OpenAI-compatible LLM client used for the teacher, the judges and evaluation.

Everything the pipeline asks of a model goes over HTTP through the ``openai`` client, exactly as
production reaches vLLM. Three request modes:

- ``completions``: render the model's chat template locally (no system prompt), append the forced
  assistant prefix (``<think>\\n``) and POST ``/v1/completions``. Works with ``transformers serve``
  and vLLM alike.
- ``chat-prefill``: chat completions whose last message is the assistant prefix, with
  ``continue_final_message=true, add_generation_prompt=false`` (vLLM, SGLang).
- ``chat``: plain chat completions, no prefix (hosted APIs, judges).
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import httpx
import openai

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Endpoint:
    name: str
    base_url: str
    api_key: str = field(default="EMPTY", repr=False)  # never printed


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    endpoint: str
    attempts: int
    started_at: str
    ended_at: str
    prompt_sent: str  # the exact prompt text (completions) or rendered messages (chat) sent


class LLMError(RuntimeError):
    """Raised when a request still fails after all retries."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class ChatRenderer:
    """Renders a chat with the model's own template, locally (for ``completions`` mode)."""

    def __init__(self, tokenizer_path: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer_path)

    def render(self, messages: Sequence[dict], prefix: str = "") -> str:
        text = self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text + prefix


class LLMClient:
    """Async client over one or more OpenAI-compatible endpoints with retries and backoff."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        model: str,
        *,
        mode: str = "completions",
        tokenizer_path: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20.0,
    ):
        if not endpoints:
            raise ValueError("LLMClient needs at least one endpoint")
        if mode not in ("completions", "chat-prefill", "chat"):
            raise ValueError(f"mode must be one of completions, chat-prefill, chat; got {mode!r}")
        self.endpoints = list(endpoints)
        self.model = model
        self.mode = mode
        self.renderer = ChatRenderer(tokenizer_path or model) if mode == "completions" else None
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._sem: asyncio.Semaphore | None = None
        self._rr = 0

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        c = self._clients.get(ep.name)
        if c is None:
            c = openai.AsyncOpenAI(
                base_url=ep.base_url,
                api_key=ep.api_key or "EMPTY",
                timeout=self.timeout_s,
                max_retries=0,  # retries are ours, with jitter
                http_client=httpx.AsyncClient(timeout=self.timeout_s, limits=httpx.Limits(max_connections=256)),
            )
            self._clients[ep.name] = c
        return c

    def _pick(self) -> Endpoint:
        ep = self.endpoints[self._rr % len(self.endpoints)]
        self._rr += 1
        return ep

    async def _once(self, ep: Endpoint, messages: Sequence[dict], sampling: Sampling, prefix: str) -> tuple[str, str | None, int, int, str]:
        client = self._client(ep)
        common: dict[str, Any] = dict(
            model=self.model, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens
        )
        if sampling.seed is not None:
            common["seed"] = sampling.seed
        if self.mode == "completions":
            prompt = self.renderer.render(messages, prefix)
            r = await client.completions.create(prompt=prompt, **common)
            if not r.choices:
                raise LLMError("empty response body (no choices)")
            ch = r.choices[0]
            text, finish, sent = ch.text or "", ch.finish_reason, prompt
        else:
            msgs = list(messages)
            extra = None
            if self.mode == "chat-prefill" and prefix:
                msgs = msgs + [{"role": "assistant", "content": prefix}]
                extra = {"continue_final_message": True, "add_generation_prompt": False}
            r = await client.chat.completions.create(messages=msgs, extra_body=extra, **common)
            if not r.choices:
                raise LLMError("empty response body (no choices)")
            ch = r.choices[0]
            text, finish = (ch.message.content or ""), ch.finish_reason
            sent = repr(msgs)
        usage = getattr(r, "usage", None)
        pt = getattr(usage, "prompt_tokens", 0) or 0
        ct = getattr(usage, "completion_tokens", 0) or 0
        return text, finish, pt, ct, sent

    async def acomplete(self, messages: Sequence[dict], sampling: Sampling, prefix: str = "") -> Completion:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        started = _now()
        last_err: Exception | None = None
        for attempt in range(1, self.max_retries + 2):
            ep = self._pick()
            try:
                async with self._sem:
                    text, finish, pt, ct, sent = await self._once(ep, messages, sampling, prefix)
                return Completion(text, finish, pt, ct, ep.name, attempt, started, _now(), sent)
            except (openai.APIStatusError,) as e:
                last_err = e
                if e.status_code not in RETRYABLE_STATUS:
                    raise LLMError(f"{ep.name}: HTTP {e.status_code}: {str(e)[:200]}") from e
            except (openai.APIConnectionError, openai.APITimeoutError, LLMError, ValueError) as e:
                last_err = e
            delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay * (0.5 + random.random()))
        raise LLMError(f"request failed after {self.max_retries + 1} attempts: {type(last_err).__name__}: {str(last_err)[:200]}")

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    def complete_many(self, items: Sequence[tuple[Sequence[dict], Sampling, str]]) -> list[Completion | Exception]:
        """Synchronous helper: run many requests concurrently; failures come back as exceptions."""

        async def run() -> list:
            try:
                return await asyncio.gather(*(self.acomplete(m, s, p) for m, s, p in items), return_exceptions=True)
            finally:
                await self.aclose()
                self._sem = None

        return asyncio.run(run())


def api_key_from_env(var: str | None) -> str:
    """API keys only ever come from the environment (or a Prefect Secret resolved by the task)."""
    if not var:
        return "EMPTY"
    return os.environ.get(var, "EMPTY")


def wait_backoff(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    return min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random())


def monotonic() -> float:
    return time.monotonic()
