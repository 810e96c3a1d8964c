"""The worker pool of distillation: the teacher worker actors and the shared request queue they
pull from (Ray itself is started and stopped by :mod:`.ray_runtime`).

Work stealing: a shard's missing requests go into one :class:`RequestQueue` actor. Every
:class:`TeacherWorker` runs as many lanes as its client has concurrency slots; a lane takes the
next request when it frees up. So a slow request holds one lane, never a chunk of other
requests, and a worker that finishes early keeps pulling while the others are busy. Each
response is written to the response cache the moment it completes; when that write fails for
good (a full disk), the worker and the queue stop: no answer is paid for that cannot be kept.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable

from ..llm import ClientSpec, LLMError, Sampling
from ..storage import config_hash
from .cache import ResponseCache
from .ray_runtime import on_shutdown, ray_init

log = logging.getLogger(__name__)


# =========================================================================== the actors
class RequestQueue:
    """Ray actor: the pending requests of each running shard (one deque per job id)."""

    def __init__(self) -> None:
        self._jobs: dict[str, deque] = {}
        self._stopped = False

    def put(self, job_id: str, reqs: list[dict]) -> int:
        if self._stopped:
            return 0
        self._jobs[job_id] = deque(reqs)
        return len(reqs)

    def stop(self) -> int:
        """Drop every pending request, and refuse new ones (the run is stopping). Returns how many were dropped."""
        self._stopped = True
        n = sum(len(q) for q in self._jobs.values())
        self._jobs.clear()
        return n

    def take(self, job_id: str, n: int) -> list[dict]:
        q = self._jobs.get(job_id)
        if not q:
            return []
        return [q.popleft() for _ in range(min(n, len(q)))]

    def left(self, job_id: str) -> int:
        return len(self._jobs.get(job_id) or ())

    def drop(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def ping(self) -> bool:
        return True


class TeacherWorker:
    """Ray actor (async): pulls requests of a job from the queue, runs them through its LLMClient
    (built here from a :class:`ClientSpec`, keys from this process's environment) and caches each
    response."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._caches: dict[str, ResponseCache] = {}
        self._progress: dict[str, dict] = {}
        self._stopped = False
        self._inflight = 0  # requests taken by a lane and not yet answered and cached

    def client(self, spec: ClientSpec) -> Any:
        h = config_hash(spec.to_dict())
        if h not in self._clients:
            self._clients[h] = spec.build()
            if self._stopped:
                self._clients[h].policy.stop()
        return self._clients[h]

    def stop(self) -> int:
        """Start no new request (first attempts and retries alike); requests in flight finish and are
        cached. Returns the number in flight."""
        self._stopped = True
        for c in self._clients.values():
            c.policy.stop()
        return self._inflight

    def inflight(self) -> int:
        return self._inflight

    def cache(self, root: str, opts: dict) -> ResponseCache:
        h = config_hash([root, sorted(opts)])
        if h not in self._caches:
            self._caches[h] = ResponseCache(root, opts)
        return self._caches[h]

    def progress(self, job_id: str) -> dict | None:
        return self._progress.get(job_id)

    def ping(self) -> bool:
        return True

    async def run(self, job_id: str, spec: ClientSpec, job: dict, cache_root: str, cache_opts: dict, queue: Any) -> list[dict]:
        """Work the job until the queue is empty. ``job``: model, mode, sampling, sampling_key."""
        client, cache = self.client(spec), self.cache(cache_root, cache_opts)
        sampling = Sampling(**job["sampling"])
        prog = self._progress[job_id] = {"done": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
        lanes = max(1, spec.capacity())
        take = _Feeder(queue, job_id, batch=max(1, lanes // 4))
        out: list[dict] = []

        gate = {"trouble": False}  # a cache write is failing: no lane starts a request meanwhile

        async def lane() -> None:
            while not self._stopped and (r := await take()) is not None:
                while gate["trouble"] and not self._stopped:
                    await asyncio.sleep(0.05)
                if self._stopped:
                    break
                self._inflight += 1
                try:
                    o = await _one(client, cache, sampling, job, r, prog, gate)
                finally:
                    self._inflight -= 1
                out.append(o)
                if o["ok"] and not o["cached"]:
                    # the storage cannot keep answers (disk full): pay for no more of them, in any shard
                    log.error("response cache %s cannot be written: no new teacher request is sent", cache_root)
                    self.stop()
                    await queue.stop.remote()

        try:
            await asyncio.gather(*(lane() for _ in range(lanes)))
            return out
        finally:
            self._progress.pop(job_id, None)


class _Feeder:
    """A worker's buffer in front of the queue, refilled in the background (``batch`` requests at a
    time) when it runs low, so lanes rarely wait on a queue round trip. Any free lane of the worker
    takes the next buffered request, so a slow request never holds others back."""

    def __init__(self, queue: Any, job_id: str, batch: int):
        self.queue, self.job_id, self.batch = queue, job_id, batch
        self.buf: deque = deque()
        self.refill: asyncio.Task | None = None
        self.closed = False

    async def _fetch(self) -> None:
        try:
            got = await self.queue.take.remote(self.job_id, self.batch)
        except Exception as e:  # the queue is gone: stop; the driver reports what is left
            log.warning("request queue lost: %s", type(e).__name__)
            got = []
        self.buf.extend(got)
        self.closed = not got
        self.refill = None

    async def __call__(self) -> dict | None:
        while True:
            if len(self.buf) <= self.batch // 2 and not self.closed and self.refill is None:
                self.refill = asyncio.ensure_future(self._fetch())
            if self.buf:
                return self.buf.popleft()
            if self.refill is None:
                return None  # closed and drained
            await asyncio.shield(self.refill)


async def _one(client: Any, cache: ResponseCache, sampling: Sampling, job: dict, r: dict, prog: dict, gate: dict | None = None) -> dict:
    try:
        c = await client.acomplete(r.get("messages") or [], sampling, r.get("prefix", ""), prompt=r.get("prompt"), key=r["key"])
    except LLMError as e:
        prog["failed"] += 1
        return {"ok": False, "key": r["key"], "error": str(e)}
    rec = {
        "key": r["key"], "record_id": r["record_id"], "sample_index": r["sample_index"],
        "model": job["model"], "mode": job["mode"], "endpoint": c.endpoint, "sampling": job["sampling_key"],
        "prompt_hash": r.get("prompt_hash"), "text": c.text, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "attempts": c.attempts,
        "started_at": c.started_at, "ended_at": c.ended_at,
    }
    cached = await _put_with_retries(cache, rec, gate=gate)
    prog["done"] += 1
    prog["prompt_tokens"] += c.prompt_tokens
    prog["completion_tokens"] += c.completion_tokens
    return {"ok": True, "record": rec, "cached": cached}


async def _put_with_retries(cache: ResponseCache, rec: dict, tries: int = 4, gate: dict | None = None) -> bool:
    """Cache one answer (durably: fsync'd locally) before anything else is done with it. While a
    write fails, ``gate["trouble"]`` holds every lane of the worker back; False after ``tries``."""
    gate = gate if gate is not None else {}
    for i in range(tries):
        try:
            if cache.local:
                cache.put(rec)  # a small file: cheaper inline than a thread hop
            else:
                await asyncio.to_thread(cache.put, rec)
            gate["trouble"] = False
            return True
        except Exception as e:  # noqa: BLE001 - the driver retries the write once more
            gate["trouble"] = True
            log.warning("cache write failed (%s: %s), try %d/%d", type(e).__name__, e, i + 1, tries)
            await asyncio.sleep(0.2 * 2**i)
    return False


# =========================================================================== the pool
_POOL_LOCK = threading.Lock()
_POOL: dict[str, Any] = {"job": None, "workers": [], "queue": None}
_STOPPED = threading.Event()  # this process is stopping: run_requests sends nothing more


def stop_requests(grace_s: float = 8.0, log_fn: Callable[[str], None] | None = None) -> int:
    """Stop distillation in this process: no teacher request starts from now on (the queue drops
    what is pending, every worker's client refuses new attempts and retries), and wait up to
    ``grace_s`` for the requests in flight, whose responses the workers cache as they arrive.
    Returns how many were still in flight when it gave up (0: every response that arrived is cached)."""
    _STOPPED.set()
    with _POOL_LOCK:
        workers, queue = list(_POOL["workers"]), _POOL["queue"]
    if not workers and queue is None:
        return 0
    import ray

    deadline = time.monotonic() + grace_s
    try:
        refs = [w.stop.remote() for w in workers] + ([queue.stop.remote()] if queue is not None else [])
        ray.get(refs, timeout=max(0.5, min(3.0, grace_s)))
        n = -1
        while True:
            n = sum(ray.get([w.inflight.remote() for w in workers], timeout=max(0.5, min(2.0, deadline - time.monotonic()))))
            if n == 0 or time.monotonic() >= deadline:
                return n
            if log_fn is not None:
                log_fn(f"waiting for {n} teacher request(s) in flight (up to {max(0.0, deadline - time.monotonic()):.0f}s more)")
                log_fn = None
            time.sleep(0.1)
    except Exception as e:  # noqa: BLE001 - Ray already gone: nothing left to wait for
        log.warning("stopping the workers: %s", type(e).__name__)
        return -1


def stopping() -> bool:
    """Whether :func:`stop_requests` was called in this process."""
    return _STOPPED.is_set()


def worker_pool(n: int) -> tuple[list, Any]:
    """(``n`` long-lived TeacherWorker actors, the RequestQueue actor), reused by every shard of
    this process (actor start-up is paid once). Rebuilt when Ray was re-initialised or an actor died."""
    import ray

    with _POOL_LOCK:
        job = ray.get_runtime_context().get_job_id()
        if _POOL["job"] != job:
            _POOL.update(job=job, workers=[], queue=None)
        if _POOL["queue"] is None:
            _POOL["queue"] = ray.remote(num_cpus=0, max_restarts=0)(RequestQueue).remote()
        workers = _POOL["workers"]
        if len(workers) < n:
            cls = ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=0)(TeacherWorker)
            workers.extend(cls.remote() for _ in range(n - len(workers)))
        return workers[:n], _POOL["queue"]


def drop_pool() -> None:
    with _POOL_LOCK:
        _POOL.update(job=None, workers=[], queue=None)


on_shutdown(drop_pool)  # the actors end with the Ray session


def warm_workers(distill_cfg: Any) -> None:
    """Start Ray and the actors ahead of the first shard (optional)."""
    import ray

    ray_init(distill_cfg.ray_address, distill_cfg.ray_num_cpus)
    workers, queue = worker_pool(distill_cfg.num_workers)
    ray.get([w.ping.remote() for w in workers] + [queue.ping.remote()])


Progress = Callable[[int, float], None]  # (requests done by this call, completion tokens/s)


def run_requests(reqs: list[dict], spec: ClientSpec, job: dict, cache_root: str, cache_opts: dict, distill_cfg: Any,
                 on_progress: Progress | None = None) -> tuple[dict[str, dict], dict[str, str], list[dict]]:
    """Run ``reqs`` on the worker actors (work stealing through the queue); return (records by
    key, failure reason by key, records the workers could not cache). Every request ends up in
    exactly one of the first two."""
    import ray

    if _STOPPED.is_set():
        return {}, {r["key"]: "stopped: no new request is sent" for r in reqs}, []
    ray_init(distill_cfg.ray_address, distill_cfg.ray_num_cpus)
    n = max(1, min(distill_cfg.num_workers, len(reqs)))
    workers, queue = worker_pool(distill_cfg.num_workers)
    workers = workers[:n]
    job_id = uuid.uuid4().hex
    if reqs and not ray.get(queue.put.remote(job_id, reqs)):  # the queue was stopped (a run stopping, a full disk)
        return {}, {r["key"]: "stopped: no new request is sent (the run is stopping, or the response cache cannot be written)" for r in reqs}, []
    wspec = spec.for_workers(distill_cfg.num_workers)
    refs = {w.run.remote(job_id, wspec, job, cache_root, cache_opts, queue): w for w in workers}
    state = _Collect(job_id)
    try:
        state.wait(refs, on_progress)
    finally:
        try:
            queue.drop.remote(job_id)
        except Exception:  # noqa: BLE001 - the queue actor may be gone with its job
            pass
    for r in reqs:  # taken by a worker that died, or left in the queue when every worker died
        if r["key"] not in state.records and r["key"] not in state.failures:
            state.failures[r["key"]] = state.lost or "not run: no worker took it"
    if state.lost:
        drop_pool()
    return state.records, state.failures, state.unsaved


class _Collect:
    """Driver-side collection of the workers' results, with live progress."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.records: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.unsaved: list[dict] = []
        self.lost: str | None = None
        self.done = 0
        self.tokens = 0

    def add(self, out: list[dict]) -> None:
        for o in out:
            if o["ok"]:
                self.records[o["record"]["key"]] = o["record"]
                self.done += 1
                self.tokens += int(o["record"].get("completion_tokens") or 0)
                if not o.get("cached", True):
                    self.unsaved.append(o["record"])
            else:
                self.failures[o["key"]] = o["error"]

    def wait(self, refs: dict, on_progress: Progress | None) -> None:
        import ray

        t0 = time.monotonic()
        remaining = list(refs)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.5)
            for ref in ready:
                try:
                    self.add(ray.get(ref))
                except Exception as e:  # the worker died: what it cached is safe, the rest is reported
                    self.lost = f"worker lost: {type(e).__name__}"
            if on_progress is not None:
                done, toks = self.done, self.tokens
                for p in self._live([refs[r] for r in remaining]):
                    done, toks = done + p["done"], toks + p["completion_tokens"]
                on_progress(done, toks / max(1e-9, time.monotonic() - t0))

    def _live(self, workers: list) -> list[dict]:
        import ray

        if not workers:
            return []
        try:
            return [p for p in ray.get([w.progress.remote(self.job_id) for w in workers], timeout=10) if p]
        except Exception:  # noqa: BLE001 - progress is best effort
            return []
