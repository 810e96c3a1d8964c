"""The call policy of :class:`~.client.LLMClient`: which failures are worth another attempt, how
long to wait before it, and when an endpoint's circuit breaker ejects it.

- retries with exponential backoff and full jitter on 429, 5xx, timeouts, connection errors,
  empty bodies and malformed JSON, honouring ``Retry-After``; at most ``max_retries`` retries;
- a circuit breaker per endpoint: after ``breaker_threshold`` consecutive failures the endpoint
  is ejected for ``breaker_cooldown_s``, then gets one trial request (half-open).

The breaker's counters live on each :class:`~.limits.EndpointState`; the policy reads and updates them.
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from typing import Iterable

import openai

from .limits import EndpointState

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(RuntimeError):
    """Raised when a request still fails after all retries (or fails in a way no retry can fix)."""


@dataclass
class CallPolicy:
    timeout_s: float = 120.0  # hard deadline of one attempt
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    stopped: bool = False  # set by stop(): no attempt starts any more (a run being stopped)

    def __post_init__(self) -> None:
        self.breaker_threshold = max(1, self.breaker_threshold)

    # ------------------------------------------------------------------ retries
    def stop(self) -> None:
        """No further attempt starts (first attempts and retries alike); attempts in flight go on."""
        self.stopped = True

    def should_retry(self, attempts: int) -> bool:
        """Whether an attempt may follow ``attempts`` attempts made (so the first one always goes,
        unless the policy was stopped)."""
        return not self.stopped and attempts <= self.max_retries

    def failure(self, e: Exception, endpoint: str) -> tuple[str, float | None]:
        """(the reason, the server's ``Retry-After`` in seconds or None) of a failed attempt worth
        another one; a failure no retry can fix (an HTTP status outside :data:`RETRYABLE_STATUS`)
        raises :class:`LLMError` instead."""
        if isinstance(e, openai.APIStatusError):
            if e.status_code not in RETRYABLE_STATUS:
                raise LLMError(f"{endpoint}: HTTP {e.status_code}: {safe_message(str(e))}") from None
            return f"HTTP {e.status_code}", _retry_after(e)
        if isinstance(e, (asyncio.TimeoutError, openai.APITimeoutError)):
            return f"timeout after {self.timeout_s:g}s", None
        if isinstance(e, openai.APIConnectionError):
            return f"connection error: {type(e).__name__}", None
        # empty body, malformed JSON, missing fields
        return f"malformed response: {type(e).__name__}: {safe_message(str(e))}", None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after attempt number ``attempt`` failed: exponential backoff with jitter,
        at least the server's ``Retry-After`` (capped at ``backoff_max_s``)."""
        d = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        d = d * (0.5 + random.random())  # jitter
        if retry_after is not None:
            d = max(d, min(retry_after, self.backoff_max_s))
        return d

    # ------------------------------------------------------------------ the circuit breaker
    def record_success(self, st: EndpointState) -> None:
        st.ok += 1
        st.consecutive_failures = 0
        st.half_open_trial = False
        st.open_until = 0.0

    def record_failure(self, st: EndpointState, states: Iterable[EndpointState]) -> None:
        """Count a failure of ``st``; eject it when the breaker trips (``states``: every endpoint
        of the client, since a lone healthy endpoint is never ejected)."""
        st.failed += 1
        st.consecutive_failures += 1
        if st.consecutive_failures < self.breaker_threshold and not st.half_open_trial:
            return
        now = time.monotonic()
        if any(o is not st and o.available(now) for o in states):
            # eject only while another endpoint can take the traffic (a lone endpoint just backs off)
            st.open_until = time.monotonic() + self.breaker_cooldown_s
            st.half_open_trial = True  # the first request after the cool-down is a trial
            st.consecutive_failures = 0
            st.ejections += 1


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        v = e.response.headers.get("retry-after")
        return float(v) if v is not None else None
    except Exception:
        return None


_KEYISH = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+)")


def safe_message(msg: str) -> str:
    """Trim an upstream error message and scrub anything that looks like a credential."""
    return _KEYISH.sub("<redacted>", msg)[:200]
