"""OpenAI-compatible LLM client used for the teacher, the judges and evaluation.

Everything the pipeline asks of a model goes over HTTP through the ``openai`` client, exactly as
production reaches vLLM. Three request modes:

- ``completions``: render the model's chat template locally (no system prompt: a default system
  turn that the template injects by itself is removed), append the forced assistant prefix
  (``<think>\\n``) and POST ``/v1/completions``. Works with ``transformers serve`` and vLLM alike.
- ``chat-prefill``: chat completions whose last message is the assistant prefix, with
  ``continue_final_message=true, add_generation_prompt=false`` (vLLM, SGLang).
- ``chat``: plain chat completions, no prefix (hosted APIs, judges).

Reliability (:class:`LLMClient`, with its :class:`~.policy.CallPolicy` and the per-endpoint
:class:`~.limits.EndpointState`):

- several endpoints; each request goes to the healthy endpoint with the fewest requests queued or
  in flight relative to its concurrency cap;
- a circuit breaker per endpoint: after ``breaker_threshold`` consecutive failures the endpoint
  is ejected for ``breaker_cooldown_s``, then gets one trial request (half-open);
- a concurrency cap per endpoint, and optional requests-per-minute / tokens-per-minute buckets;
- retries with exponential backoff and full jitter on 429, 5xx, timeouts, connection errors,
  empty bodies and malformed JSON, honouring ``Retry-After``; every attempt runs under a hard
  per-request deadline (``timeout_s``);
- API keys never appear in ``repr``, logs or error messages.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import httpx
import openai

from .limits import EndpointState
from .policy import CallPolicy, LLMError
from .render import ChatRenderer, chat_messages, get_renderer

MODES = ("completions", "chat-prefill", "chat")
KEY_HEADER = "X-Finr1-Request-Key"  # lets a server (and our fake one) count requests per key


@dataclass
class Endpoint:
    name: str
    base_url: str
    api_key: str = field(default="EMPTY", repr=False)  # never printed
    # Optional per-endpoint overrides of the client-wide limits (None = use the client's).
    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    api_key_env: str | None = None  # where the key came from (a ClientSpec names this, never the key)


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
    # the server's reasoning field (vLLM's reasoning parser: the think block), None without one;
    # ``text`` is then the whole output again: reasoning + "</think>" + content (content null: reasoning only)
    reasoning: str | None = None


class _Retryable(Exception):
    """Internal: a failure worth another attempt (empty body, malformed JSON, no choices)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class LLMClient:
    """Async client over one or more OpenAI-compatible endpoints with retries, limits and ejection.

    ``max_concurrency`` is the cap per endpoint (an :class:`Endpoint` may override it).
    ``rpm`` / ``tpm`` are optional per-endpoint requests- and tokens-per-minute limits.
    """

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
        rpm: float | None = None,
        tpm: float | None = None,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
    ):
        if not endpoints:
            raise ValueError("LLMClient needs at least one endpoint")
        if mode not in MODES:
            raise ValueError(f"mode must be one of completions, chat-prefill, chat; got {mode!r}")
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique; got {names}")
        self.endpoints = list(endpoints)
        self.model = model
        self.mode = mode
        self.tokenizer_path = tokenizer_path
        self.max_concurrency = max_concurrency
        self.policy = CallPolicy(timeout_s, max_retries, backoff_base_s, backoff_max_s, breaker_threshold, breaker_cooldown_s)
        self._states = {
            e.name: EndpointState(e, e.max_concurrency or max_concurrency, e.rpm or rpm, e.tpm or tpm) for e in self.endpoints
        }
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._renderer: ChatRenderer | None = None

    def __repr__(self) -> str:  # endpoints' repr already hides keys; say so explicitly anyway
        eps = ", ".join(f"{e.name}={e.base_url}" for e in self.endpoints)
        return f"LLMClient(model={self.model!r}, mode={self.mode!r}, endpoints=[{eps}])"

    # ------------------------------------------------------------------ helpers
    @property
    def renderer(self) -> ChatRenderer | None:
        """Loaded lazily: a caller that passes pre-rendered prompts never needs a tokenizer."""
        if self.mode != "completions":
            return None
        if self._renderer is None:
            self._renderer = get_renderer(self.tokenizer_path or self.model)
        return self._renderer

    def render(self, messages: Sequence[dict], prefix: str = "") -> str:
        """The exact prompt text (completions) or JSON of the messages (chat modes) to be sent."""
        if self.mode == "completions":
            return self.renderer.render(messages, prefix)
        return json.dumps(chat_messages(messages, prefix, self.mode), ensure_ascii=False)

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        c = self._clients.get(ep.name)
        if c is None:
            cap = self._states[ep.name].cap
            c = openai.AsyncOpenAI(
                base_url=ep.base_url,
                api_key=ep.api_key or "EMPTY",
                timeout=self.policy.timeout_s,
                max_retries=0,  # retries are ours, with jitter
                http_client=openai.DefaultAsyncHttpxClient(
                    timeout=self.policy.timeout_s,
                    limits=httpx.Limits(max_connections=max(cap * 2, 16), max_keepalive_connections=max(cap * 2, 16)),
                ),
            )
            self._clients[ep.name] = c
        return c

    def endpoint_stats(self) -> dict[str, dict]:
        now = time.monotonic()
        return {
            n: {"ok": s.ok, "failed": s.failed, "ejections": s.ejections, "ejected": not s.available(now)}
            for n, s in self._states.items()
        }

    def _pick(self) -> EndpointState:
        """Least loaded healthy endpoint (random tie-break); if all are ejected, the soonest back."""
        now = time.monotonic()
        states = list(self._states.values())
        healthy = [s for s in states if s.available(now)]
        if not healthy:
            return min(states, key=lambda s: s.open_until)
        best = min(s.assigned / s.cap for s in healthy)
        return random.choice([s for s in healthy if s.assigned / s.cap == best])

    async def _endpoint(self) -> EndpointState:
        """:meth:`_pick`; when every endpoint is ejected, wait for the first to come back."""
        st = self._pick()
        now = time.monotonic()
        if not st.available(now):
            await asyncio.sleep(st.open_until - now)
        return st

    def _ejected_while_queued(self, st: EndpointState) -> bool:
        """``st`` was ejected while the request queued for it, and another endpoint is healthy."""
        return not st.available(time.monotonic()) and any(s.available(time.monotonic()) for s in self._states.values())

    # ------------------------------------------------------------------ one attempt
    async def _once(
        self, ep: Endpoint, messages: Sequence[dict], sampling: Sampling, prefix: str, prompt: str | None, key: str | None
    ) -> tuple[str, str | None, int, int, str, str | None]:
        client = self._client(ep)
        common: dict[str, Any] = dict(
            model=self.model, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens
        )
        if sampling.seed is not None:
            common["seed"] = sampling.seed
        if key:
            common["extra_headers"] = {KEY_HEADER: key}
        if self.mode == "completions":
            sent = prompt if prompt is not None else self.renderer.render(messages, prefix)
            r = await client.completions.create(prompt=sent, **common)
            ch = _first_choice(r)
            text, finish, reasoning = getattr(ch, "text", None), ch.finish_reason, None
        else:
            msgs = chat_messages(messages, prefix, self.mode)
            extra = {"continue_final_message": True, "add_generation_prompt": False} if self.mode == "chat-prefill" and prefix else None
            r = await client.chat.completions.create(messages=msgs, extra_body=extra, **common)
            ch = _first_choice(r)
            msg = getattr(ch, "message", None)
            text, finish = (getattr(msg, "content", None) if msg is not None else None), ch.finish_reason
            reasoning = _reasoning_field(msg)
            if reasoning is not None:  # vLLM's reasoning parser split the output: the whole of it again
                text = reasoning + ("</think>" + text if text is not None else "")
            sent = prompt if prompt is not None else json.dumps(msgs, ensure_ascii=False)
        if text is None:
            raise _Retryable("malformed response: choice without text")
        usage = getattr(r, "usage", None)
        pt = getattr(usage, "prompt_tokens", 0) or 0
        ct = getattr(usage, "completion_tokens", 0) or 0
        return text, finish, pt, ct, sent, reasoning

    # ------------------------------------------------------------------ public
    async def acomplete(
        self,
        messages: Sequence[dict],
        sampling: Sampling,
        prefix: str = "",
        *,
        prompt: str | None = None,
        key: str | None = None,
    ) -> Completion:
        """One completion with retries. ``prompt`` (optional) is a pre-rendered prompt text for
        ``completions`` mode; ``key`` (optional) is sent as a header for server-side accounting."""
        started = _now()
        est_tokens = _estimate_tokens(messages, sampling, prompt)
        attempt, last_err = 0, "no attempt made"
        while self.policy.should_retry(attempt):
            st = await self._endpoint()
            st.assigned += 1
            retry_after: float | None = None
            try:
                async with st.semaphore():
                    if self._ejected_while_queued(st):
                        continue  # go elsewhere (not an attempt)
                    if self.policy.stopped:  # stopped while this request waited for a slot
                        break
                    attempt += 1
                    await st.acquire(est_tokens)
                    text, finish, pt, ct, sent, reasoning = await asyncio.wait_for(
                        self._once(st.ep, messages, sampling, prefix, prompt, key), self.policy.timeout_s
                    )
                    st.refund(est_tokens, pt + ct)
                self.policy.record_success(st)
                return Completion(text, finish, pt, ct, st.ep.name, attempt, started, _now(), sent, reasoning)
            except Exception as e:  # noqa: BLE001 - the policy decides: another attempt, or LLMError
                last_err, retry_after = self.policy.failure(e, st.ep.name)
                self.policy.record_failure(st, self._states.values())
            finally:
                st.assigned -= 1
            if self.policy.should_retry(attempt):
                await asyncio.sleep(self.policy.delay(attempt, retry_after))
        if self.policy.stopped:
            raise LLMError(f"stopped: no new request is sent ({attempt} attempts made; last: {last_err})")
        raise LLMError(f"request failed after {attempt} attempts: {last_err}")

    async def aclose(self) -> None:
        for c in self._clients.values():
            try:
                await c.close()
            except Exception:
                pass
        self._clients.clear()
        for s in self._states.values():  # semaphores belong to the loop that is closing
            s.reset_loop()

    def complete_many(self, items: Sequence[tuple[Sequence[dict], Sampling, str]]) -> list[Completion | Exception]:
        """Synchronous helper: run many requests concurrently; failures come back as exceptions."""

        async def run() -> list:
            try:
                return await asyncio.gather(*(self.acomplete(m, s, p) for m, s, p in items), return_exceptions=True)
            finally:
                await self.aclose()

        return asyncio.run(run())


def _reasoning_field(msg: Any) -> str | None:
    """The message's reasoning (vLLM >= 0.10: ``reasoning``; older vLLM, SGLang: ``reasoning_content``)."""
    if msg is None:
        return None
    for name in ("reasoning", "reasoning_content"):
        v = getattr(msg, name, None)
        if isinstance(v, str):
            return v
    return None


def _first_choice(r: Any) -> Any:
    if isinstance(r, (str, bytes)) or r is None:
        raise _Retryable("malformed response: body is not JSON" if r else "empty response body")
    choices = getattr(r, "choices", None)
    if not choices:
        raise _Retryable("empty response body (no choices)")
    return choices[0]


def _estimate_tokens(messages: Sequence[dict], sampling: Sampling, prompt: str | None) -> float:
    """What a request will cost against a tokens-per-minute limit before its usage is known."""
    return (len(prompt) if prompt else sum(len(str(m.get("content", ""))) for m in messages)) / 4 + sampling.max_tokens


def api_key_from_env(var: str | None) -> str:
    """API keys only ever come from the environment (or a Prefect Secret resolved by the task)."""
    if not var:
        return "EMPTY"
    return os.environ.get(var, "EMPTY")


def key_env_var(endpoint_cfg: Any) -> str | None:
    """The environment variable that holds an endpoint's API key: ``api_key_env``, or for a key kept
    in a Prefect Secret block (``api_key_secret``) the variable the task loads it into."""
    var = getattr(endpoint_cfg, "api_key_env", None)
    if var or not getattr(endpoint_cfg, "api_key_secret", None):
        return var
    return default_key_var(endpoint_cfg.name)


def default_key_var(endpoint_name: str) -> str:
    """``FINR1_API_KEY_<NAME>``: the variable for an endpoint whose key has no variable of its own."""
    return "FINR1_API_KEY_" + "".join(ch if ch.isalnum() else "_" for ch in endpoint_name).upper()


def endpoints_from_role(role: Any, default_base_url: str | None = None, api_keys: dict[str, str] | None = None) -> list[Endpoint]:
    """Build :class:`Endpoint` objects from an ``LLMRole`` config.

    ``default_base_url`` fills endpoints whose ``base_url`` is null (the managed local server);
    ``api_keys`` maps endpoint name -> key (e.g. resolved from a Prefect Secret by the task) and
    wins over ``api_key_env``.
    """
    out = []
    for ec in role.endpoints:
        url = ec.base_url or default_base_url
        if not url:
            raise ValueError(f"endpoint {ec.name!r} has no base_url and no managed server URL was given")
        var = key_env_var(ec)
        key = (api_keys or {}).get(ec.name) or api_key_from_env(var)
        out.append(Endpoint(ec.name, url, key, api_key_env=var))
    return out
