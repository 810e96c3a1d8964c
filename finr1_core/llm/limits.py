"""Per-endpoint limits: token buckets for requests/tokens per minute, the per-endpoint state
(concurrency cap, circuit breaker counters) and the split of global limits across workers."""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any


class TokenBucket:
    """Per-minute limit as a token bucket (burst = 1/6 of a minute's allowance, at least 1 unit)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self.level = self.capacity
        self.t = time.monotonic()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, amount: float) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        amount = min(amount, self.capacity)  # a single huge request must still be able to go
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def reset_loop(self) -> None:
        """Forget the lock bound to a closing event loop (a later loop makes a fresh one)."""
        self._lock = None

    def refund(self, amount: float) -> None:
        """Give back (positive) or charge extra (negative) once the real usage is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class EndpointState:
    def __init__(self, ep: Any, cap: int, rpm: float | None, tpm: float | None):
        self.ep = ep
        self.cap = cap
        self.sem: asyncio.Semaphore | None = None
        self.assigned = 0  # queued on this endpoint or in flight
        self.rpm = TokenBucket(rpm) if rpm else None
        self.tpm = TokenBucket(tpm) if tpm else None
        self.consecutive_failures = 0
        self.open_until = 0.0  # circuit open (endpoint ejected) until this monotonic time
        self.half_open_trial = False
        self.ok = 0
        self.failed = 0
        self.ejections = 0

    def semaphore(self) -> asyncio.Semaphore:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.cap)
        return self.sem

    def available(self, now: float) -> bool:
        return now >= self.open_until

    async def acquire(self, est_tokens: float) -> None:
        """Wait for the rate limits: one request, ``est_tokens`` tokens (settled by :meth:`refund`)."""
        if self.rpm:
            await self.rpm.take(1)
        if self.tpm:
            await self.tpm.take(est_tokens)

    def refund(self, est_tokens: float, used_tokens: int) -> None:
        """Settle the tokens-per-minute charge once the real usage is known (none reported: as estimated)."""
        if self.tpm:
            self.tpm.refund(est_tokens - (used_tokens or est_tokens))

    def reset_loop(self) -> None:
        """Drop the semaphore and bucket locks: they belong to the event loop that is closing."""
        self.sem = None
        for b in (self.rpm, self.tpm):
            if b is not None:
                b.reset_loop()




def per_worker(limit: float | None, workers: int) -> float | None:
    """Split a global limit evenly across ``workers`` clients (rounded up for concurrency caps)."""
    if limit is None:
        return None
    return max(1, math.ceil(limit / workers)) if isinstance(limit, int) else limit / workers
