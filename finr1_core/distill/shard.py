"""One distill shard, exactly once: keys, committed check, cache look-up, send, rows, commit.

1. every (prompt, sample_index) gets a stable request key (:func:`~.keys.request_key`);
2. a shard already committed with the same request set is skipped;
3. responses already in the response cache are loaded, so a re-run never pays for them again;
4. only the missing requests go out, on the Ray worker actors (:func:`~.pool.run_requests`), each
   response cached the moment it completes, so a crash loses only requests in flight;
5. when every key has a response, the trace rows (with lineage columns) are committed as one
   Parquet shard, atomically, with a manifest entry whose ``extra`` holds the token figures. If
   some requests still fail after retries, :class:`DistillShardError` is raised after every
   successful response is cached; a re-run sends only the failed ones.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import pyarrow as pa

from ..llm import ClientSpec, Endpoint
from ..storage import Store, config_hash
from .cache import ResponseCache, response_cache_root
from .keys import effective_prefix, parse_trace, render_prompt_text, request_key, sampling_dict
from .pool import run_requests, stop_requests

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
ProgressCB = Callable[[int, int, float, float], None]


def token_cost(prompt_tokens: int, completion_tokens: int, role_cfg: Any) -> float:
    """USD for these tokens at the role's ``price_per_m_input`` / ``price_per_m_output``."""
    return prompt_tokens / 1e6 * float(role_cfg.price_per_m_input) + completion_tokens / 1e6 * float(role_cfg.price_per_m_output)


@dataclass
class _Plan:
    """What a shard asks for: one item per distinct key, in prompt order."""

    mode: str
    samp: dict
    samp_json: str
    items: list[tuple[str, dict, int, str]]  # (key, prompt, sample_index, prompt_text)
    dups: int

    @property
    def keys(self) -> list[str]:
        return [it[0] for it in self.items]


def distill_shard(
    store: Store,
    shard_name: str,
    prompts: list[dict],
    role_cfg: Any,
    distill_cfg: Any,
    endpoints: Sequence[Endpoint] | ClientSpec,
    cache_root: str | None = None,
    tokenizer_path: str | None = None,
    progress_cb: ProgressCB | None = None,
    *,
    cfg_hash: str | None = None,
    show_progress: bool | None = None,
) -> ShardResult:
    """Distil one shard exactly once. See the module docstring.

    ``endpoints`` is the teacher's :class:`ClientSpec` (``ClientSpec.from_role(role, base_url)``)
    or a list of :class:`Endpoint` (turned into one with ``role_cfg``'s limits). ``cache_root``
    is the storage root that holds ``_cache/responses/`` (default ``store.root``). ``tokenizer_path``
    (completions mode) defaults to ``role_cfg.tokenizer`` then ``role_cfg.model``. ``cfg_hash``
    tags the committed shard; by default it is the hash of the shard's sorted request keys.
    ``progress_cb(done, total, tokens_per_s, eta_s)`` is called about twice a second;
    ``show_progress`` (default: when stderr is a terminal) shows a tqdm bar. Raises
    :class:`DistillShardError` if requests still fail.
    """
    t0 = time.monotonic()
    spec = endpoints if isinstance(endpoints, ClientSpec) else ClientSpec.from_endpoints(endpoints, role_cfg)
    tok = tokenizer_path or getattr(role_cfg, "tokenizer", None) or role_cfg.model
    plan = plan_shard(prompts, role_cfg, tok)
    cfg_hash = cfg_hash or config_hash({"stage": STAGE, "schema": TRACE_SCHEMA_VERSION, "keys": sorted(plan.keys)})
    res = ShardResult(shard=shard_name, requests=len(plan.items), duplicates_dropped=plan.dups, cfg_hash=cfg_hash)
    if _already_committed(store, shard_name, res):
        res.elapsed_s = time.monotonic() - t0
        _ProgressView(progress_cb, False, res.requests, res.requests, shard_name).final()
        return res
    cache = ResponseCache(response_cache_root(cache_root or store.root), store.storage_options)
    records = cache.get_many(plan.keys)
    res.cached = len(records)
    pending = [it for it in plan.items if it[0] not in records]
    res.requested = len(pending)
    view = _ProgressView(progress_cb, show_progress, res.cached, res.requests, shard_name)
    failures = _send(pending, plan, spec, role_cfg, distill_cfg, cache, records, res, view) if pending else {}
    view.final()
    _recover_late(cache, failures, records, res)
    if failures:
        res.elapsed_s = time.monotonic() - t0
        raise _shard_error(shard_name, failures, res)
    rows = trace_rows(plan, records, role_cfg, res)
    res.elapsed_s = time.monotonic() - t0
    _commit(store, shard_name, rows, plan, spec, role_cfg, res)
    return res


def plan_shard(prompts: list[dict], role_cfg: Any, tokenizer_path: str | None) -> _Plan:
    """Step 1: a key for every (prompt, sample_index); repeated keys are counted, not sent twice."""
    mode = role_cfg.mode
    samp = sampling_dict(role_cfg)
    items: list[tuple[str, dict, int, str]] = []
    seen: set[str] = set()
    dups = 0
    for p in prompts:
        text = render_prompt_text(p, mode, tokenizer_path if mode == "completions" else None)
        for i in range(role_cfg.n):
            k = request_key(p["record_id"], text, role_cfg.model, samp, i)
            if k in seen:
                dups += 1
                continue
            seen.add(k)
            items.append((k, p, i, text))
    return _Plan(mode, samp, json.dumps(samp, sort_keys=True), items, dups)


def _already_committed(store: Store, shard_name: str, res: ShardResult) -> bool:
    """Step 2: the shard is committed with this request set: fill ``res`` from its manifest entry."""
    if not store.shard_committed(STAGE, shard_name, res.cfg_hash):
        return False
    entry = store.read_json(store.uri(STAGE, "_shards", f"{shard_name}.json"))
    ex = entry.get("extra") or {}
    res.skipped, res.rows, res.path = True, entry.get("rows", 0), entry.get("path")
    res.cached = res.requests
    for k in ("prompt_tokens", "completion_tokens", "cost_usd", "flags"):
        if k in ex:
            setattr(res, k, ex[k])
    return True


def _send(pending: list, plan: _Plan, spec: ClientSpec, role_cfg: Any, distill_cfg: Any, cache: ResponseCache,
          records: dict, res: ShardResult, view: "_ProgressView") -> dict[str, str]:
    """Step 4: the missing requests on the Ray workers; returns failure reasons by key."""
    reqs = []
    for k, p, i, text in pending:
        r = {"key": k, "record_id": p["record_id"], "sample_index": i, "prompt_hash": p.get("prompt_hash"),
             "prefix": effective_prefix(p, plan.mode)}
        if plan.mode == "completions":
            r["prompt"] = text  # rendered once here; the workers need no tokenizer
        else:
            r["messages"] = p["messages"]
        reqs.append(r)
    job = {"model": role_cfg.model, "mode": plan.mode, "sampling_key": plan.samp_json,
           "sampling": {"temperature": role_cfg.temperature, "top_p": role_cfg.top_p, "max_tokens": role_cfg.max_tokens}}
    new, failures, unsaved = run_requests(reqs, spec, job, cache.root, cache.storage_options, distill_cfg, view.update)
    try:
        for rec in unsaved:  # the worker could not write these: try once more from here
            cache.put(rec)
    except OSError as e:
        stop_requests(grace_s=0)  # this process pays for no answer it cannot keep
        raise OSError(e.errno, f"response cache {cache.root} cannot be written ({e.strerror or e}); no new teacher request is sent: "
                               f"free space, then `finr1 retry-failed`") from None
    records.update(new)
    res.completed = len(new)
    res.paid_prompt_tokens = sum(int(r.get("prompt_tokens") or 0) for r in new.values())
    res.paid_completion_tokens = sum(int(r.get("completion_tokens") or 0) for r in new.values())
    res.paid_cost_usd = token_cost(res.paid_prompt_tokens, res.paid_completion_tokens, role_cfg)
    return failures


def _recover_late(cache: ResponseCache, failures: dict[str, str], records: dict, res: ShardResult) -> None:
    """A lost worker may still have cached some of its requests before it died."""
    if not failures:
        return
    for k, rec in cache.get_many(list(failures)).items():
        failures.pop(k, None)
        records[k] = rec
        res.completed += 1


def _shard_error(shard_name: str, failures: dict[str, str], res: ShardResult) -> "DistillShardError":
    res.failed = len(failures)
    reasons: dict[str, int] = {}
    for e in failures.values():
        reasons[e] = reasons.get(e, 0) + 1
    res.errors = [f"{n} x {e}" for e, n in sorted(reasons.items(), key=lambda x: -x[1])[:10]]
    return DistillShardError(
        f"distill shard {shard_name}: {res.failed} of {res.requests} requests failed after retries "
        f"({'; '.join(res.errors[:3])}); {res.cached + res.completed} responses are cached, a re-run sends only the rest",
        res,
    )


def trace_rows(plan: _Plan, records: dict[str, dict], role_cfg: Any, res: ShardResult) -> list[dict]:
    """Step 5: one trace row per key (prompt order), parsed and flagged; totals go into ``res``."""
    rows = []
    flags = {"truncated": 0, "no_think_close": 0, "empty": 0}
    for k, p, i, _text in plan.items:
        rec = records[k]
        prefix = effective_prefix(p, plan.mode)
        parsed = parse_trace(rec["text"], prefix, rec.get("finish_reason"))
        if rec.get("reasoning") is not None:  # the server's reasoning parser split it (vLLM): its think block
            parsed["reasoning"] = rec["reasoning"].strip()
        for f in flags:
            flags[f] += int(parsed[f])
        comp = rec["text"] or ""
        rows.append({
            "key": k, "record_id": str(p["record_id"]), "sample_index": i, "repo_name": p.get("repo_name"),
            "source": p.get("source") or p.get("repo_name"), "module": _s(p.get("module")),
            "question": _s(p.get("question")), "gold_answer": _s(p.get("answer")), "answer_type": _s(p.get("answer_type")),
            "text": comp if comp.lstrip().startswith("<think>") else prefix + comp,
            **{f: parsed[f] for f in ("reasoning", "answer", "truncated", "no_think_close", "empty")},
            "teacher_model": rec.get("model") or role_cfg.model, "mode": rec.get("mode") or plan.mode,
            "endpoint": rec.get("endpoint"), "sampling": rec.get("sampling") or plan.samp_json,
            "prompt_hash": p.get("prompt_hash"), "prompt_template_version": _s(p.get("prompt_template_version")),
            "started_at": rec.get("started_at"), "ended_at": rec.get("ended_at"),
            "prompt_tokens": int(rec.get("prompt_tokens") or 0), "completion_tokens": int(rec.get("completion_tokens") or 0),
            "finish_reason": rec.get("finish_reason"), "attempts": int(rec.get("attempts") or 1),
        })
    res.rows, res.flags = len(rows), flags
    res.prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    res.completion_tokens = sum(r["completion_tokens"] for r in rows)
    res.cost_usd = token_cost(res.prompt_tokens, res.completion_tokens, role_cfg)
    return rows


def _commit(store: Store, shard_name: str, rows: list[dict], plan: _Plan, spec: ClientSpec, role_cfg: Any, res: ShardResult) -> None:
    """Step 6: the rows as one Parquet shard, atomically, with the figures in the manifest's ``extra``."""
    extra = {
        "teacher_model": role_cfg.model, "mode": plan.mode, "endpoints": [e.name for e in spec.endpoints],
        "sampling": plan.samp, "n": role_cfg.n, "requests": res.requests, "cached": res.cached, "requested": res.requested,
        "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens, "cost_usd": res.cost_usd,
        "paid_prompt_tokens": res.paid_prompt_tokens, "paid_completion_tokens": res.paid_completion_tokens,
        "paid_cost_usd": res.paid_cost_usd, "flags": res.flags, "duplicates_dropped": plan.dups,
        "elapsed_s": round(res.elapsed_s, 3),
    }
    info = store.write_shard(STAGE, shard_name, pa.Table.from_pylist(rows, schema=TRACE_SCHEMA), cfg_hash=res.cfg_hash, extra=extra)
    res.path = info.path


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


class _ProgressView:
    """Live progress of a shard: a callback and/or a tqdm bar, counting cached responses as done."""

    def __init__(self, cb: ProgressCB | None, show: bool | None, already: int, total: int, shard_name: str):
        self.cb, self.already, self.total = cb, already, total
        self.t0 = time.monotonic()
        self.bar = None
        if show is None:
            show = sys.stderr.isatty()
        if show and already < total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=already, desc=f"distill {shard_name}", unit="req", leave=False)

    def update(self, done: int, tokens_per_s: float) -> None:
        rate = done / max(1e-9, time.monotonic() - self.t0)
        left = self.total - self.already - done
        self._emit(self.already + done, tokens_per_s, left / rate if rate > 0 else float("inf"))

    def final(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._emit(self.total, 0.0, 0.0)

    def _emit(self, done: int, tps: float, eta: float) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(f"{tps:,.0f} tok/s, ETA {eta:,.0f}s", refresh=False)
            self.bar.refresh()
        if self.cb is not None:
            try:
                self.cb(done, self.total, tps, eta)
            except Exception:  # a progress callback never fails a shard
                log.exception("progress callback failed")
