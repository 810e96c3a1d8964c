"""``run_eval``: any mix of local checkpoints and endpoints over named benchmarks, cached per row.

Scoring of a finance row: the rule verifier first (:func:`finr1_core.verify.verify`); a verdict it
cannot decide (``unknown``) goes to the Fin-R1 answer judge (:class:`finr1_core.judge.AnswerJudge`)
when one is given. ``scored_by`` says who decided: ``rule``, ``judge``, ``undecided`` (no judge,
or the judge gave no verdict: counted incorrect) or ``error`` (the request failed after the
client's retries: counted incorrect, labelled, and in the table's failure count).

Requests go through :class:`finr1_core.llm.LLMClient` (the distillation client: per-endpoint
concurrency cap, rpm/tpm buckets, retries with backoff) and are consumed by a fixed pool of
workers, never one task per row.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from finr1_core.extract import split_think
from finr1_core.judge import AnswerJudge, run_sync
from finr1_core.llm import Endpoint, LLMClient, Sampling
from finr1_core.verify import verify

from . import harness
from .benchmarks import Benchmark, load_benchmark_rows, parse_benchmarks, parse_data
from .cache import ResultCache, cache_key
from .targets import EvalError, ModelTarget, parse_model_spec


@dataclass
class EvalSettings:
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, top_p=1.0, max_tokens=1024))
    samples: int = 1  # samples per row (Pass@1 is averaged over them)
    prefix: str = "<think>\n"  # forced on local checkpoints and chat-prefill endpoints
    max_concurrency: int = 8  # per endpoint
    timeout_s: float = 300.0
    max_retries: int = 3
    rpm: float | None = None
    tpm: float | None = None
    rel_tol: float = 0.01
    flush_every: int = 8
    judge_max_tokens: int = 1024

    def sampling_dict(self) -> dict:
        return self.sampling.as_dict()


@dataclass
class EvalResult:
    rows: list[dict]
    table: dict
    markdown: str
    uris: dict[str, str]
    notes: dict[str, str]
    evaluated: int  # requests made by this run (the rest came from the cache)


def model_dir(t: ModelTarget) -> str:
    return f"{t.name}-{t.identity_hash()}"


def _client(t: ModelTarget, base_url: str, s: EvalSettings) -> LLMClient:
    return LLMClient(
        [Endpoint(t.name, base_url, t.api_key)], t.request_model, mode=t.request_mode,
        tokenizer_path=t.path if t.is_local else None, max_concurrency=s.max_concurrency,
        timeout_s=s.timeout_s, max_retries=s.max_retries, rpm=s.rpm, tpm=s.tpm,
    )


def _prefix(t: ModelTarget, s: EvalSettings) -> str:
    return s.prefix if t.request_mode in ("completions", "chat-prefill") else ""


async def score_row(client: LLMClient, judge: AnswerJudge | None, item: dict, prefix: str, s: EvalSettings) -> dict:
    """Generate, then rule-verify, then judge what the rules cannot decide. Never raises."""
    out = {"output": "", "finish_reason": None, "completion_tokens": 0, "error": None, "judge_score": None, "judge_reply": None}
    seed = None if s.sampling.seed is None else s.sampling.seed + item["sample"]
    sampling = Sampling(s.sampling.temperature, s.sampling.top_p, s.sampling.max_tokens, seed)
    try:
        c = await client.acomplete(item["messages"], sampling, prefix)
        out.update(output=prefix + c.text, finish_reason=c.finish_reason, completion_tokens=c.completion_tokens)
    except Exception as e:  # a failed request is scored incorrect and labelled, never dropped
        out.update(error=f"{type(e).__name__}: {e}"[:300], verdict="incorrect", rule_verdict=None, rule_reason=None,
                   extracted=None, scored_by="error", correct=False)
        return out
    v = verify(item["answer"], out["output"], item["answer_type"], question=item["question"], rel_tol=s.rel_tol)
    out.update(extracted=v.extracted, rule_verdict=v.verdict, rule_reason=v.reason, verdict=v.verdict, scored_by="rule")
    if v.verdict == "unknown":
        out["scored_by"] = "undecided"
        if judge is not None:
            think, after = split_think(out["output"])
            j = await judge.judge(item["question"], item["answer"], after or out["output"], think or None)
            out.update(judge_score=j.score, judge_reply=(j.raw or j.error or "")[:4000])
            if j.score is not None:
                out.update(verdict="correct" if j.score == 1 else "incorrect", scored_by="judge")
    out["correct"] = out["verdict"] == "correct"
    return out


class Progress:
    """done/total with a rate-based ETA, reported through ``on_progress(dict)``."""

    def __init__(self, total: int, on_progress: Callable[[dict], None] | None):
        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.monotonic()
        self.cb = on_progress

    def step(self, model: str, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.cb:
            el = time.monotonic() - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else None
            self.cb({"done": self.done, "total": self.total, "failed": self.failed, "model": model, "elapsed_s": el, "eta_s": eta})


async def _run_target(t: ModelTarget, base_url: str, items: list[dict], judge_client: LLMClient | None,
                      cache: ResultCache, s: EvalSettings, progress: Progress) -> None:
    client = _client(t, base_url, s)
    judge = None
    if judge_client is not None:
        judge = AnswerJudge(judge_client, sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=s.judge_max_tokens))
    queue: asyncio.Queue = asyncio.Queue()
    for it in items:
        queue.put_nowait(it)
    prefix = _prefix(t, s)

    async def worker() -> None:
        while True:
            try:
                it = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            res = await score_row(client, judge, it, prefix, s)
            cache.add(model_dir(t), it["benchmark"], _row(t, it, res, judge_client, s))
            progress.step(t.name, res["scored_by"] == "error")

    try:
        await asyncio.gather(*(worker() for _ in range(min(len(items), s.max_concurrency))))
    finally:
        cache.flush()
        await client.aclose()
        if judge_client is not None:
            await judge_client.aclose()


def _row(t: ModelTarget, it: dict, res: dict, judge_client: LLMClient | None, s: EvalSettings) -> dict:
    return {
        "model": t.name, "target": t.identity(), "benchmark": it["benchmark"], "row_id": it["row_id"],
        "sample": it["sample"], "source": it["source"], "question": it["question"], "gold": it["answer"],
        "answer_type": it["answer_type"], **res,
        "judge_model": judge_client.model if (judge_client is not None and res.get("scored_by") in ("judge", "undecided")) else None,
        "sampling": json.dumps(s.sampling_dict()), "cache_key": it["cache_key"],
    }


def default_server(model: str | None = None):
    """``transformers serve`` on CPU (loads ``model`` on demand), one request at a time: its continuous batching stalled here
    under a loaded CPU (no response in 120 s for four short prompts; without it: 88 s for all four)."""
    from finr1_core.serving import ManagedServer

    return ManagedServer(model, continuous_batching=False)


def _key(t: ModelTarget, bname: str, info: dict, row_id: str, k: int, s: EvalSettings) -> str:
    """A harness row's answer depends on the lm-eval task and its own sampling (no forced prefix)."""
    if info.get("harness"):
        return cache_key(t.identity(), bname, row_id, k, harness.sampling_key(bname, s), "")
    return cache_key(t.identity(), bname, row_id, k, s.sampling_dict(), _prefix(t, s))


def plan(targets: Sequence[ModelTarget], bench_rows: dict[str, dict], cache: ResultCache, s: EvalSettings) -> tuple[dict, dict]:
    """(pending items per target name, cached rows per target name) for every planned key."""
    pending: dict[str, list[dict]] = {}
    cached: dict[str, list[dict]] = {}
    for t in targets:
        pending[t.name], cached[t.name] = [], []
        for bname, info in bench_rows.items():
            have = cache.load(model_dir(t), bname)
            for r in info["rows"]:
                for k in range(s.samples):
                    key = _key(t, bname, info, r["row_id"], k, s)
                    hit = have.get(key)
                    if hit is not None and hit.get("scored_by") != "error":
                        cached[t.name].append(hit)
                    else:
                        pending[t.name].append({**r, "benchmark": bname, "sample": k, "cache_key": key, "harness": bool(info.get("harness"))})
    return pending, cached


def _run_harness(t: ModelTarget, base_url: str, items: list[dict], rows: dict[str, dict], cache: ResultCache, s: EvalSettings,
                 progress: Progress) -> None:
    """The pending general-benchmark rows of one target through lm-eval; every (row, sample) comes
    back and is cached, a failed request as ``scored_by="error"`` (incorrect, counted)."""
    specs = {b: rows[b]["specs"] for b in {it["benchmark"] for it in items}}

    def on_result(it: dict, rec: dict) -> None:
        failed = rec.get("error") is not None
        b = it["benchmark"]
        cache.add(model_dir(t), b, {
            "model": t.name, "target": t.identity(), "benchmark": b, "row_id": it["row_id"], "sample": it["sample"],
            "source": rows[b]["source"], "question": rec.get("question") or it.get("question", ""), "gold": rec.get("gold"),
            "answer_type": "harness", "output": rec.get("output", ""), "finish_reason": None, "completion_tokens": None,
            "error": rec.get("error"), "judge_score": None, "judge_reply": None, "extracted": rec.get("extracted"),
            "rule_verdict": None, "rule_reason": None, "verdict": "correct" if rec.get("correct") and not failed else "incorrect",
            "scored_by": "error" if failed else "harness", "correct": bool(rec.get("correct")) and not failed, "judge_model": None,
            "sampling": json.dumps(harness.sampling_key(b, s)), "cache_key": it["cache_key"], "harness_task": rec.get("task"),
            "harness_metrics": json.dumps(rec.get("metrics") or {}, ensure_ascii=False),
        })

    try:
        harness.run_items(t, base_url, items, specs, s, on_result, lambda failed: progress.step(t.name, failed))
    finally:
        cache.flush()


def _judge_target(judge: ModelTarget | str | None) -> ModelTarget | None:
    if judge is None or isinstance(judge, ModelTarget):
        return judge
    spec = judge if "=" in judge.split("#", 1)[0] else f"judge={judge}"
    return parse_model_spec(spec)


def _judge_client(j: ModelTarget | None, base_url: str | None, s: EvalSettings) -> LLMClient | None:
    if j is None:
        return None
    return LLMClient([Endpoint(j.name, base_url or j.base_url, j.api_key)], j.request_model, mode=j.request_mode,
                     tokenizer_path=j.path if j.is_local else None, max_concurrency=s.max_concurrency,
                     timeout_s=s.timeout_s, max_retries=s.max_retries)


def load_rows(benches: Sequence[Benchmark], data: dict[str, tuple[str, str]], limit: int | None, prompts_cfg=None) -> dict[str, dict]:
    out = {}
    for b in benches:
        if b.kind != "finance":
            continue
        key, path = data.get(b.name, (None, None))
        out[b.name] = load_benchmark_rows(b, path, limit, key=key, prompts_cfg=prompts_cfg)
    return out


def run_eval(models: Sequence[ModelTarget | str], benchmarks: Sequence[str] | str, data: dict | Sequence[str] | None = None,
             limit: int | None = None, out: str = "eval-out", *, judge: ModelTarget | str | None = None,
             on_progress: Callable[[dict], None] | None = None, settings: EvalSettings | None = None,
             serve: Callable[[str], contextlib.AbstractContextManager] | None = None, reference: bool = True,
             prompts_cfg=None, bench_rows: dict[str, dict] | None = None) -> EvalResult:
    """Evaluate every model on every benchmark; results, table and chart are written under ``out``.

    ``models``: :class:`ModelTarget` or ``NAME=PATH`` / ``NAME=URL#MODEL`` strings. ``data``:
    ``{benchmark_or_source: path}`` or ``["SOURCE=PATH", ...]``. ``serve(path)``: the server of
    one local checkpoint (a context manager with ``base_url``; default: ``transformers serve``
    through :class:`finr1_core.serving.ManagedServer`), started only while that model has rows
    left to evaluate (and once for a local judge). ``bench_rows`` replaces loading (the pipeline's held-out rows).
    """
    from .table import build_table, write_outputs

    s = settings or EvalSettings()
    targets = [m if isinstance(m, ModelTarget) else parse_model_spec(m) for m in models]
    names = [t.name for t in targets]
    if not targets or len(set(names)) != len(names):
        raise EvalError(f"--model: give at least one model, names unique (got {', '.join(names) or 'none'})")
    benches = parse_benchmarks(benchmarks)
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1 (got {limit})")
    data_map = parse_data([f"{k}={v}" for k, v in data.items()] if isinstance(data, dict) else list(data or []))
    rows = dict(bench_rows) if bench_rows is not None else load_rows(benches, data_map, limit, prompts_cfg)
    general = [b.name for b in benches if b.kind == "harness" and b.name not in rows]
    if general:  # the general benchmarks' rows, as lm-eval's tasks load them (data included)
        rows.update(harness.plan(general, data_map, limit))
    jt = _judge_target(judge)
    cache = ResultCache(out, s.flush_every)
    pending, cached = plan(targets, rows, cache, s)
    progress = Progress(sum(len(v) for v in pending.values()), on_progress)
    with contextlib.ExitStack() as stack:
        judge_url = None
        if jt is not None and jt.is_local and any(not it["harness"] for v in pending.values() for it in v):
            judge_url = stack.enter_context((serve or default_server)(jt.path)).base_url
        for t in targets:
            if not pending[t.name]:
                continue
            finance = [it for it in pending[t.name] if not it["harness"]]
            general_items = [it for it in pending[t.name] if it["harness"]]
            # the judge's server serves a target of the same model too (one vLLM server per model)
            same = t.is_local and judge_url is not None and t.path == jt.path
            with ((serve or default_server)(t.path) if t.is_local and not same else contextlib.nullcontext(None)) as srv:
                url = judge_url if same else srv.base_url if t.is_local else t.base_url
                if finance:
                    run_sync(_run_target(t, url, finance, _judge_client(jt, judge_url, s), cache, s, progress))
                if general_items:
                    _run_harness(t, url, general_items, rows, cache, s, progress)
    done_rows = _collect(targets, rows, cache, s)
    table = build_table(done_rows, [b for b in benches if b.name in rows], [t.name for t in targets])
    md, uris = write_outputs(out, done_rows, table, reference=reference, judge=jt.request_model if jt else None)
    notes = {b: f"{info['source']}: {info['note']}; {info['quarantined']} quarantined" for b, info in rows.items()}
    return EvalResult(done_rows, table, md, uris, notes, progress.done)


def _collect(targets: Sequence[ModelTarget], rows: dict[str, dict], cache: ResultCache, s: EvalSettings) -> list[dict]:
    """The planned rows only (a smaller --limit on a re-run reports just those), in a stable order."""
    out = []
    for t in targets:
        for bname, info in rows.items():
            have = cache.load(model_dir(t), bname)
            for r in info["rows"]:
                for k in range(s.samples):
                    hit = have.get(_key(t, bname, info, r["row_id"], k, s))
                    if hit is not None:
                        out.append(hit)
    return out
