"""Ray-parallel distillation with a durable response cache (exactly-once traces).

One shard = one call of :func:`distill_shard` (one Prefect task). Inside it:

1. every (prompt, sample_index) gets a stable request key (:func:`request_key`, DESIGN.md §1);
2. responses already in the response cache are loaded, so a re-run never pays for them again;
3. only the missing requests go out, split across ``num_workers`` Ray actors, each running an
   async :class:`~finr1_core.llm.LLMClient` (caps, retries, endpoint ejection). Each actor writes
   every response to the cache the moment it completes (one small JSON object per key, written
   atomically), so a crash loses only requests in flight;
4. when every key has a response, the trace rows (with lineage columns) are committed as one
   Parquet shard, atomically, with a manifest entry. If some requests still fail after retries,
   the shard raises :class:`DistillShardError` after every successful response is cached; a
   re-run sends only the failed ones.

Cache layout: ``<storage_root>/_cache/responses/<key[:2]>/<key>.json`` (local or ``s3://``).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import fsspec
import pyarrow as pa

from .llm import Endpoint, LLMClient, LLMError, Sampling, chat_messages, get_renderer
from .storage import Store, config_hash, join

log = logging.getLogger(__name__)

STAGE = "distill"
TRACE_SCHEMA_VERSION = 1

TRACE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("record_id", pa.string()),
        ("sample_index", pa.int32()),
        ("repo_name", pa.string()),
        ("source", pa.string()),
        ("module", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("answer_type", pa.string()),
        ("text", pa.string()),
        ("reasoning", pa.string()),
        ("answer", pa.string()),
        ("truncated", pa.bool_()),
        ("no_think_close", pa.bool_()),
        ("empty", pa.bool_()),
        ("teacher_model", pa.string()),
        ("mode", pa.string()),
        ("endpoint", pa.string()),
        ("sampling", pa.string()),
        ("prompt_hash", pa.string()),
        ("prompt_template_version", pa.string()),
        ("started_at", pa.string()),
        ("ended_at", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("attempts", pa.int32()),
    ]
)


# =========================================================================== keys and parsing
def request_key(record_id: str, prompt_text: str, model: str, sampling: dict, sample_index: int) -> str:
    """sha256 of the record id, the rendered prompt, the model, the sampling parameters and the
    sample index (DESIGN.md §1). Stable across processes and machines."""
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


# =========================================================================== response cache
def response_cache_root(storage_root: str) -> str:
    """``<storage_root>/_cache/responses`` (idempotent: a path already ending so is returned as is)."""
    r = storage_root.rstrip("/")
    return r if r.endswith("/_cache/responses") else join(r, "_cache", "responses")


class ResponseCache:
    """One small JSON object per completed response: ``<root>/<key[:2]>/<key>.json``.

    Writes are atomic (temporary name + rename locally; one PUT on object stores), so a reader
    sees a whole record or none. Works on any fsspec URI.
    """

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, _ = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,))
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def uri(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.json"

    def _path(self, key: str) -> str:
        return self.fs._strip_protocol(self.uri(key))

    def put(self, record: dict) -> None:
        key = record["key"]
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        path = self._path(key)
        parent = path.rsplit("/", 1)[0]
        if self.local:
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                with self._lock:
                    self._dirs.add(parent)
            tmp = f"{parent}/.tmp-{key}-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """Cached records for those keys that have one (a bad or foreign record counts as missing)."""
        keys = list(keys)
        if not keys:
            return {}
        out: dict[str, dict] = {}
        if self.local:
            for k in keys:
                try:
                    with open(self._path(k), "rb") as f:
                        raw = f.read()
                except FileNotFoundError:
                    continue
                rec = _load_record(raw, k)
                if rec is not None:
                    out[k] = rec
            return out
        paths = {self._path(k): k for k in keys}
        got = self.fs.cat(list(paths), on_error="omit")
        for p, raw in got.items():
            k = paths.get(p) or paths.get(self.fs._strip_protocol(p))
            if k is None or isinstance(raw, Exception):
                continue
            rec = _load_record(raw, k)
            if rec is not None:
                out[k] = rec
        return out

    def keys(self) -> set[str]:
        """Every key in the cache (tests and tools; a production cache is large)."""
        base = self.fs._strip_protocol(self.root)
        if not self.fs.exists(base):
            return set()
        return {p.rsplit("/", 1)[1][:-5] for p in self.fs.find(base) if p.endswith(".json") and "/.tmp-" not in p}


def _load_record(raw: bytes, key: str) -> dict | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("key") != key or "text" not in rec:
        return None
    return rec


# =========================================================================== Ray
_RAY_LOCK = threading.Lock()


def ray_init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process, behind a lock (DESIGN.md §2).

    ``address`` None starts a local Ray (no dashboard, a fresh temp dir, auth off unless the
    environment says otherwise); ``'auto'`` or ``'ray://host:10001'`` joins a cluster. If Ray is
    already initialised in this process, this does nothing.
    """
    import ray

    with _RAY_LOCK:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address in (None, "", "local"):
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # Ray's OOM killer picks its own newest workers: here, the small I/O-bound teacher
            # actors, while the memory is held by a model server outside Ray (measured: a CPU
            # `transformers serve --continuous-batching` holds ~10 GB). Off for the local Ray.
            os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _temp_dir=tempfile.mkdtemp(prefix="finr1-ray-"),
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING)


class TeacherWorker:
    """Ray actor (async): runs a batch of requests through an LLMClient, caching each response."""

    def __init__(self) -> None:
        self._clients: dict[str, LLMClient] = {}
        self._caches: dict[str, ResponseCache] = {}
        self._progress: dict[str, dict] = {}

    def _client(self, spec: dict) -> LLMClient:
        h = _spec_hash(spec)
        c = self._clients.get(h)
        if c is None:
            c = LLMClient(
                [Endpoint(**e) for e in spec["endpoints"]],
                spec["model"],
                mode=spec["mode"],
                tokenizer_path=spec.get("tokenizer_path"),
                **spec["client"],
            )
            self._clients[h] = c
        return c

    def _cache(self, root: str, opts: dict) -> ResponseCache:
        h = config_hash([root, sorted(opts)])
        c = self._caches.get(h)
        if c is None:
            c = self._caches[h] = ResponseCache(root, opts)
        return c

    def progress(self, job_id: str) -> dict | None:
        return self._progress.get(job_id)

    def ping(self) -> bool:
        return True

    async def run(self, job_id: str, spec: dict, cache_root: str, cache_opts: dict, reqs: list[dict]) -> list[dict]:
        client = self._client(spec)
        cache = self._cache(cache_root, cache_opts)
        sampling = Sampling(**spec["sampling"])
        prog = self._progress[job_id] = {"done": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}

        async def one(r: dict) -> dict:
            try:
                c = await client.acomplete(r.get("messages") or [], sampling, r.get("prefix", ""), prompt=r.get("prompt"), key=r["key"])
            except LLMError as e:
                prog["failed"] += 1
                return {"ok": False, "key": r["key"], "error": str(e)}
            rec = {
                "key": r["key"],
                "record_id": r["record_id"],
                "sample_index": r["sample_index"],
                "model": spec["model"],
                "mode": spec["mode"],
                "endpoint": c.endpoint,
                "sampling": spec["sampling_key"],
                "prompt_hash": r.get("prompt_hash"),
                "text": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "attempts": c.attempts,
                "started_at": c.started_at,
                "ended_at": c.ended_at,
            }
            cached = await _put_with_retries(cache, rec)
            prog["done"] += 1
            prog["prompt_tokens"] += c.prompt_tokens
            prog["completion_tokens"] += c.completion_tokens
            return {"ok": True, "record": rec, "cached": cached}

        try:
            return await asyncio.gather(*(one(r) for r in reqs))
        finally:
            self._progress.pop(job_id, None)


async def _put_with_retries(cache: ResponseCache, rec: dict, tries: int = 4) -> bool:
    for i in range(tries):
        try:
            if cache.local:
                cache.put(rec)  # ~100 µs: cheaper inline than a thread hop
            else:
                await asyncio.to_thread(cache.put, rec)
            return True
        except Exception as e:  # noqa: BLE001 - the driver retries the write once more
            log.warning("cache write failed (%s), try %d/%d", type(e).__name__, i + 1, tries)
            await asyncio.sleep(0.2 * 2**i)
    return False


def _spec_hash(spec: dict) -> str:
    s = dict(spec)
    s["endpoints"] = [{**e, "api_key": hashlib.sha256(str(e.get("api_key")).encode()).hexdigest()} for e in spec["endpoints"]]
    return config_hash(s)


_POOL_LOCK = threading.Lock()
_POOL: dict[str, Any] = {"job": None, "workers": []}


def _worker_pool(n: int) -> list:
    """``n`` long-lived TeacherWorker actors, reused by every shard of this process (actor start-up
    is paid once, not per shard). Rebuilt when Ray was re-initialised or a worker died."""
    import ray

    with _POOL_LOCK:
        job = ray.get_runtime_context().get_job_id()
        if _POOL["job"] != job:
            _POOL["job"], _POOL["workers"] = job, []
        workers = _POOL["workers"]
        if len(workers) < n:
            cls = ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=0)(TeacherWorker)
            workers.extend(cls.remote() for _ in range(n - len(workers)))
        return workers[:n]


def _drop_pool() -> None:
    with _POOL_LOCK:
        _POOL["job"], _POOL["workers"] = None, []


def warm_workers(distill_cfg: Any) -> None:
    """Start Ray and the worker actors ahead of the first shard (optional)."""
    import ray

    ray_init(distill_cfg.ray_address, distill_cfg.ray_num_cpus)
    ray.get([w.ping.remote() for w in _worker_pool(distill_cfg.num_workers)])


# =========================================================================== the shard
@dataclass
class ShardResult:
    shard: str
    rows: int = 0
    requests: int = 0  # keys in the shard (prompts x n)
    cached: int = 0  # responses found in the cache before this call
    requested: int = 0  # requests sent by this call
    completed: int = 0  # of those, how many succeeded (and were cached)
    failed: int = 0  # still failing after retries (the shard then raises)
    skipped: bool = False  # the shard was already committed with the same request set
    prompt_tokens: int = 0  # over every row of the shard
    completion_tokens: int = 0
    cost_usd: float = 0.0
    paid_prompt_tokens: int = 0  # only what this call paid for
    paid_completion_tokens: int = 0
    paid_cost_usd: float = 0.0
    flags: dict = field(default_factory=dict)  # truncated / no_think_close / empty counts
    duplicates_dropped: int = 0  # prompts repeated within the shard (same key)
    elapsed_s: float = 0.0
    path: str | None = None
    cfg_hash: str = ""
    errors: list[str] = field(default_factory=list)  # up to 10 distinct failure reasons, with counts

    def to_dict(self) -> dict:
        return asdict(self)

    as_dict = to_dict


class DistillShardError(RuntimeError):
    """Some requests of a shard still failed after retries. Every successful response is cached;
    re-running the shard sends only the failed requests. ``.result`` holds the figures."""

    def __init__(self, message: str, result: ShardResult):
        super().__init__(message)
        self.result = result


ProgressCB = Callable[[int, int, float, float], None]


def _cost(pt: int, ct: int, role_cfg: Any) -> float:
    return pt / 1e6 * float(role_cfg.price_per_m_input) + ct / 1e6 * float(role_cfg.price_per_m_output)


def distill_shard(
    store: Store,
    shard_name: str,
    prompts: list[dict],
    role_cfg: Any,
    distill_cfg: Any,
    endpoints: list[Endpoint],
    cache_root: str | None = None,
    tokenizer_path: str | None = None,
    progress_cb: ProgressCB | None = None,
    *,
    cfg_hash: str | None = None,
    show_progress: bool | None = None,
) -> ShardResult:
    """Distil one shard exactly once. See the module docstring.

    ``cache_root`` is the storage root that holds ``_cache/responses/`` (default ``store.root``; a
    path already ending in ``_cache/responses`` is used as is). ``tokenizer_path`` (completions
    mode) defaults to ``role_cfg.tokenizer`` then ``role_cfg.model``. ``cfg_hash`` (optional) tags
    the committed shard; by default it is the hash of the shard's sorted request keys, so a shard
    is skipped exactly when the same requests were already committed. ``progress_cb(done, total,
    tokens_per_s, eta_s)`` is called about twice a second; ``show_progress`` (default: when stderr
    is a terminal) shows a tqdm bar. Raises :class:`DistillShardError` if requests still fail.
    """
    t0 = time.monotonic()
    mode = role_cfg.mode
    tok = tokenizer_path or getattr(role_cfg, "tokenizer", None) or role_cfg.model
    samp = sampling_dict(role_cfg)
    samp_json = json.dumps(samp, sort_keys=True)
    cache_root = response_cache_root(cache_root or store.root)

    # ---- 1. keys for every (prompt, sample_index)
    items: list[tuple[str, dict, int, str]] = []  # (key, prompt, sample_index, prompt_text)
    seen: set[str] = set()
    dups = 0
    for p in prompts:
        text = render_prompt_text(p, mode, tok if mode == "completions" else None)
        for i in range(role_cfg.n):
            k = request_key(p["record_id"], text, role_cfg.model, samp, i)
            if k in seen:
                dups += 1
                continue
            seen.add(k)
            items.append((k, p, i, text))
    keys = [it[0] for it in items]
    cfg_hash = cfg_hash or config_hash({"stage": STAGE, "schema": TRACE_SCHEMA_VERSION, "keys": sorted(keys)})
    res = ShardResult(shard=shard_name, requests=len(keys), duplicates_dropped=dups, cfg_hash=cfg_hash)

    # ---- 2. already committed?
    if store.shard_committed(STAGE, shard_name, cfg_hash):
        entry = store.read_json(store.uri(STAGE, "_shards", f"{shard_name}.json"))
        ex = entry.get("extra") or {}
        res.skipped, res.rows, res.path = True, entry.get("rows", 0), entry.get("path")
        res.cached = res.requests
        for k in ("prompt_tokens", "completion_tokens", "cost_usd", "flags"):
            if k in ex:
                setattr(res, k, ex[k])
        res.elapsed_s = time.monotonic() - t0
        _report(progress_cb, None, res.requests, res.requests, 0.0, 0.0)
        return res

    # ---- 3. the cache
    cache = ResponseCache(cache_root, store.storage_options)
    records = cache.get_many(keys)
    res.cached = len(records)
    pending = [it for it in items if it[0] not in records]
    res.requested = len(pending)

    # ---- 4. the missing requests, on Ray actors
    failures: dict[str, str] = {}
    if pending:
        spec = {
            "endpoints": [{"name": e.name, "base_url": e.base_url, "api_key": e.api_key, "max_concurrency": e.max_concurrency, "rpm": e.rpm, "tpm": e.tpm} for e in endpoints],
            "model": role_cfg.model,
            "mode": mode,
            "tokenizer_path": tok if mode == "completions" else None,
            "sampling": {"temperature": role_cfg.temperature, "top_p": role_cfg.top_p, "max_tokens": role_cfg.max_tokens},
            "sampling_key": samp_json,
            "client": _client_kwargs(role_cfg, distill_cfg.num_workers, len(endpoints)),
        }
        reqs = []
        for k, p, i, text in pending:
            r = {"key": k, "record_id": p["record_id"], "sample_index": i, "prompt_hash": p.get("prompt_hash"), "prefix": effective_prefix(p, mode)}
            if mode == "completions":
                r["prompt"] = text  # rendered once here; the workers need no tokenizer
            else:
                r["messages"] = p["messages"]
            reqs.append(r)
        new, failures, unsaved = _run_on_ray(reqs, spec, cache_root, store.storage_options, distill_cfg, res.cached, res.requests, progress_cb, show_progress, shard_name)
        for rec in unsaved:  # the worker could not write these: try once more from here
            cache.put(rec)
        records.update(new)
        res.completed = len(new)
        res.paid_prompt_tokens = sum(int(r.get("prompt_tokens") or 0) for r in new.values())
        res.paid_completion_tokens = sum(int(r.get("completion_tokens") or 0) for r in new.values())
        res.paid_cost_usd = _cost(res.paid_prompt_tokens, res.paid_completion_tokens, role_cfg)
    else:
        _report(progress_cb, None, res.requests, res.requests, 0.0, 0.0)

    if failures:  # a lost worker may still have cached some of its chunk before it died
        late = cache.get_many(list(failures))
        for k, rec in late.items():
            failures.pop(k, None)
            records[k] = rec
            res.completed += 1
    res.failed = len(failures)
    if failures:
        reasons: dict[str, int] = {}
        for e in failures.values():
            reasons[e] = reasons.get(e, 0) + 1
        res.errors = [f"{n} x {e}" for e, n in sorted(reasons.items(), key=lambda x: -x[1])[:10]]
        res.elapsed_s = time.monotonic() - t0
        raise DistillShardError(
            f"distill shard {shard_name}: {res.failed} of {res.requests} requests failed after retries "
            f"({'; '.join(res.errors[:3])}); {res.cached + res.completed} responses are cached, a re-run sends only the rest",
            res,
        )

    # ---- 5. rows, and the atomic commit
    rows = []
    flags = {"truncated": 0, "no_think_close": 0, "empty": 0}
    for k, p, i, _text in items:
        rec = records[k]
        prefix = effective_prefix(p, mode)
        parsed = parse_trace(rec["text"], prefix, rec.get("finish_reason"))
        for f in flags:
            flags[f] += int(parsed[f])
        comp = rec["text"] or ""
        rows.append(
            {
                "key": k,
                "record_id": str(p["record_id"]),
                "sample_index": i,
                "repo_name": p.get("repo_name"),
                "source": p.get("source") or p.get("repo_name"),
                "module": _s(p.get("module")),
                "question": _s(p.get("question")),
                "gold_answer": _s(p.get("answer")),
                "answer_type": _s(p.get("answer_type")),
                "text": comp if comp.lstrip().startswith("<think>") else prefix + comp,
                "reasoning": parsed["reasoning"],
                "answer": parsed["answer"],
                "truncated": parsed["truncated"],
                "no_think_close": parsed["no_think_close"],
                "empty": parsed["empty"],
                "teacher_model": rec.get("model") or role_cfg.model,
                "mode": rec.get("mode") or mode,
                "endpoint": rec.get("endpoint"),
                "sampling": rec.get("sampling") or samp_json,
                "prompt_hash": p.get("prompt_hash"),
                "prompt_template_version": _s(p.get("prompt_template_version")),
                "started_at": rec.get("started_at"),
                "ended_at": rec.get("ended_at"),
                "prompt_tokens": int(rec.get("prompt_tokens") or 0),
                "completion_tokens": int(rec.get("completion_tokens") or 0),
                "finish_reason": rec.get("finish_reason"),
                "attempts": int(rec.get("attempts") or 1),
            }
        )
    res.rows = len(rows)
    res.flags = flags
    res.prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    res.completion_tokens = sum(r["completion_tokens"] for r in rows)
    res.cost_usd = _cost(res.prompt_tokens, res.completion_tokens, role_cfg)
    res.elapsed_s = time.monotonic() - t0
    extra = {
        "teacher_model": role_cfg.model,
        "mode": mode,
        "endpoints": [e.name for e in endpoints],
        "sampling": samp,
        "n": role_cfg.n,
        "requests": res.requests,
        "cached": res.cached,
        "requested": res.requested,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "cost_usd": res.cost_usd,
        "paid_prompt_tokens": res.paid_prompt_tokens,
        "paid_completion_tokens": res.paid_completion_tokens,
        "paid_cost_usd": res.paid_cost_usd,
        "flags": flags,
        "duplicates_dropped": dups,
        "elapsed_s": round(res.elapsed_s, 3),
    }
    info = store.write_shard(STAGE, shard_name, pa.Table.from_pylist(rows, schema=TRACE_SCHEMA), cfg_hash=cfg_hash, extra=extra)
    res.path = info.path
    return res


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _client_kwargs(role_cfg: Any, workers: int, n_endpoints: int) -> dict:
    """LLMClient settings for one worker: global per-endpoint caps split across the workers."""
    g = lambda k, d=None: getattr(role_cfg, k, d)  # noqa: E731
    rpm, tpm = g("rpm"), g("tpm")
    return {
        "max_concurrency": max(1, math.ceil(role_cfg.max_concurrency / workers)),
        "timeout_s": float(role_cfg.timeout_s),
        "max_retries": int(role_cfg.max_retries),
        "backoff_base_s": float(g("backoff_base_s", 0.5)),
        "backoff_max_s": float(g("backoff_max_s", 20.0)),
        "rpm": rpm / workers if rpm else None,
        "tpm": tpm / workers if tpm else None,
    }


def _report(cb: ProgressCB | None, bar: Any, done: int, total: int, tps: float, eta: float) -> None:
    if bar is not None:
        bar.n = done
        bar.set_postfix_str(f"{tps:,.0f} tok/s, ETA {eta:,.0f}s", refresh=False)
        bar.refresh()
    if cb is not None:
        try:
            cb(done, total, tps, eta)
        except Exception:  # a progress callback never fails a shard
            log.exception("progress callback failed")


def _run_on_ray(
    reqs: list[dict],
    spec: dict,
    cache_root: str,
    cache_opts: dict,
    distill_cfg: Any,
    already: int,
    total: int,
    progress_cb: ProgressCB | None,
    show_progress: bool | None,
    shard_name: str,
) -> tuple[dict[str, dict], dict[str, str], list[dict]]:
    """Split ``reqs`` across the worker actors; return (records by key, failures by key, unsaved)."""
    import ray

    ray_init(distill_cfg.ray_address, distill_cfg.ray_num_cpus)
    n = max(1, min(distill_cfg.num_workers, len(reqs)))
    workers = _worker_pool(distill_cfg.num_workers)[:n]
    job = uuid.uuid4().hex
    chunks = [reqs[i::n] for i in range(n)]
    t_start = time.monotonic()
    refs = {w.run.remote(job, spec, cache_root, cache_opts, c): (w, c) for w, c in zip(workers, chunks)}

    bar = None
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=already, desc=f"distill {shard_name}", unit="req", leave=False)

    records: dict[str, dict] = {}
    failures: dict[str, str] = {}
    unsaved: list[dict] = []
    finished_done = 0
    finished_tokens = 0
    dead = False
    remaining = list(refs)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.5)
            for ref in ready:
                w, chunk = refs[ref]
                try:
                    out = ray.get(ref)
                except Exception as e:  # the worker died: its chunk's cached responses are safe
                    dead = True
                    for r in chunk:
                        failures[r["key"]] = f"worker lost: {type(e).__name__}"
                    continue
                for o in out:
                    if o["ok"]:
                        records[o["record"]["key"]] = o["record"]
                        finished_done += 1
                        finished_tokens += int(o["record"].get("completion_tokens") or 0)
                        if not o.get("cached", True):
                            unsaved.append(o["record"])
                    else:
                        failures[o["key"]] = o["error"]
            # live progress: finished chunks + what the running workers report
            done, toks = finished_done, finished_tokens
            if remaining:
                try:
                    live = ray.get([refs[r][0].progress.remote(job) for r in remaining], timeout=10)
                except Exception:
                    live = []
                for p in live:
                    if p:
                        done += p["done"]
                        toks += p["completion_tokens"]
            el = max(1e-9, time.monotonic() - t_start)
            rate = done / el
            left = len(reqs) - done - len(failures)
            _report(progress_cb, bar, already + done, total, toks / el, left / rate if rate > 0 else float("inf"))
    finally:
        if bar is not None:
            bar.close()
    if dead:
        _drop_pool()
    return records, failures, unsaved
