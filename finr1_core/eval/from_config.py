"""The pipeline's eval: base/SFT/GRPO checkpoints plus the config's extra endpoints, on the run's
held-out rows (and any named benchmarks in ``eval.benchmarks``), through :func:`run_eval`.

Local checkpoints are served by finr1 for the duration (``eval.server``: ``transformers serve`` in
the embedded profile, ``vllm serve`` in production), so the eval never needs a ``base_url`` for
them; the answer judge is the config's ``judge`` role.
"""
from __future__ import annotations

from typing import Callable

from finr1_core.llm import Sampling, api_key_from_env

from .benchmarks import BENCHMARKS, Benchmark, load_benchmark_rows, parse_data
from .runner import EvalResult, EvalSettings, run_eval
from .targets import ModelTarget


def settings_from_config(cfg) -> EvalSettings:
    e = cfg.eval
    return EvalSettings(
        sampling=Sampling(e.temperature, e.top_p, e.max_tokens), samples=e.samples, prefix=cfg.prompts.think_prefix,
        max_concurrency=e.max_concurrency, timeout_s=e.timeout_s, max_retries=e.max_retries, rel_tol=cfg.filter.rel_tol,
        judge_max_tokens=cfg.judge.max_tokens,
    )


def targets_from_config(cfg, checkpoints: dict[str, str], api_keys: dict[str, str] | None = None) -> list[ModelTarget]:
    """``checkpoints`` (name -> local dir, e.g. base/sft/grpo) then every ``eval.models`` endpoint.
    ``api_keys`` (name -> key, from Prefect Secret blocks) wins over ``api_key_env``."""
    out = [ModelTarget(name, path=path) for name, path in checkpoints.items() if path]
    for m in cfg.eval.models:
        key = (api_keys or {}).get(m.name) or api_key_from_env(m.api_key_env)
        out.append(ModelTarget(m.name, base_url=m.base_url.rstrip("/"), model=m.model, mode=m.mode, api_key=key))
    return out


def judge_from_config(cfg, api_keys: dict[str, str] | None = None) -> ModelTarget | None:
    """The ``judge`` role's first endpoint (null base_url = a local model finr1 serves)."""
    if not cfg.eval.use_judge:
        return None
    ep = cfg.judge.endpoints[0]
    if ep.base_url:
        key = (api_keys or {}).get(ep.name) or api_key_from_env(ep.api_key_env)
        return ModelTarget("judge", base_url=ep.base_url.rstrip("/"), model=cfg.judge.model, mode=cfg.judge.mode, api_key=key)
    return ModelTarget("judge", path=cfg.judge.model, mode=cfg.judge.mode)


def heldout_benchmarks(records: list[dict], prompts_cfg, max_rows: int) -> dict[str, dict]:
    """Held-out records grouped by source into benchmark rows (at most ``max_rows`` per source)."""
    from finr1_core.prompts import build_prompt

    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(_bench_of(r["repo_name"]).name, []).append(r)
    out = {}
    for name, recs in sorted(by.items()):
        rows = [{"row_id": r["id"], "source": r["repo_name"], "question": r["question"], "answer": r["answer"],
                 "answer_type": r["answer_type"], "messages": build_prompt(r, prompts_cfg)["messages"]} for r in recs[:max_rows]]
        out[name] = {"rows": rows, "source": ",".join(sorted({r["repo_name"] for r in recs})), "quarantined": 0, "note": f"{len(rows)} held-out rows"}
    return out


def _bench_of(source: str) -> Benchmark:
    for b in BENCHMARKS.values():
        if source in b.sources:
            return b
    return Benchmark(source, source, (source,))


def server_factory(cfg, log: Callable[[str], None] | None = None, record: list | None = None) -> Callable:
    """What serves the local checkpoints: ``eval.server`` with the ``serve`` section's settings."""
    return engine_server(cfg.eval.server, cfg.serve, log, record)


def engine_server(engine: str, serve_cfg=None, log: Callable[[str], None] | None = None, record: list | None = None) -> Callable:
    """``serve(path)`` for :func:`run_eval`: vLLM with the reasoning parser and the forced-think
    template (``engine`` vllm; ``serve_cfg``'s vLLM settings, default: the config's defaults), falling
    back in one line to ``transformers serve`` where vLLM is not installed or does not start; or
    ``transformers serve`` itself (``serve_cfg``'s start-up timeout)."""
    import logging

    from finr1_core.config import ServeConfig
    from finr1_core.serving import serving, vllm_kwargs

    s = serve_cfg or ServeConfig()
    managed = dict(continuous_batching=False, startup_timeout_s=s.startup_timeout_s)
    say = log or logging.getLogger("finr1.eval").warning
    return lambda path: serving(path, engine, log=say, vllm=vllm_kwargs(s, served_model_name=path), managed=managed, record=record)


def eval_from_config(cfg, checkpoints: dict[str, str], heldout: list[dict], out: str, *,
                     on_progress: Callable[[dict], None] | None = None, api_keys: dict[str, str] | None = None,
                     log: Callable[[str], None] | None = None, served: list | None = None) -> EvalResult:
    """Evaluate ``checkpoints`` + ``cfg.eval.models`` on the held-out records and ``cfg.eval.benchmarks``;
    ``served`` gets one entry per local server started (model, engine, start-up seconds)."""
    rows = heldout_benchmarks(heldout, cfg.prompts, cfg.eval.max_rows)
    data = parse_data([f"{k}={v}" for k, v in cfg.eval.data.items()])
    general = []  # the general benchmarks: planned and run by run_eval through lm-eval
    for name in cfg.eval.benchmarks:
        b = BENCHMARKS[name]
        key, path = data.get(name, (None, None))
        if b.kind == "harness":
            general.append(b)
            continue
        rows[name] = load_benchmark_rows(b, path, cfg.eval.max_rows, key=key, prompts_cfg=cfg.prompts)
    benches = [BENCHMARKS.get(n) or _bench_of(n) for n in rows] + general
    gdata = {b.name: data[b.name][1] for b in general if b.name in data}
    return run_eval(targets_from_config(cfg, checkpoints, api_keys), benches, gdata, cfg.eval.max_rows if general else None, out,
                    judge=judge_from_config(cfg, api_keys), on_progress=on_progress, settings=settings_from_config(cfg),
                    serve=server_factory(cfg, log, served), reference=cfg.eval.reference, bench_rows=rows)
