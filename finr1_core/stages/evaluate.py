"""eval (every model in one call, through finr1_core.eval) and report."""
from __future__ import annotations

import os
from pathlib import Path

from finr1_core.serving import vllm_problem
from finr1_core.stages.base import Context, Stage
from finr1_core.stages.train import checkpoint_info, model_path

MODELS = ("base", "sft", "grpo")


def _eval(ctx: Context) -> dict:
    """Base, SFT and GRPO checkpoints (those that exist) plus ``eval.models`` endpoints, on the
    held-out rows and ``eval.benchmarks``; finr1 serves each local checkpoint for the duration.
    Per-row answers are cached under ``eval/table/``, so a re-run evaluates only what changed."""
    from finr1_core.eval.from_config import eval_from_config
    from finr1_core.records import table_to_records

    cfg = ctx.cfg
    paths = {m: model_path(cfg, m) for m in MODELS}
    skipped = {m: why for m, p in paths.items() if (why := unservable(cfg, p))}
    checkpoints = {m: p for m, p in paths.items() if m not in skipped}
    heldout = table_to_records(ctx.store.read_stage("heldout"))
    served: list[dict] = []
    res = eval_from_config(cfg, checkpoints, heldout, out=ctx.store.uri("eval", "table"), on_progress=ctx.options.get("on_progress"),
                           api_keys=ctx.options.get("api_keys"), log=ctx.options.get("log"), served=served)
    for s in served:  # which checkpoint that was
        s["name"] = ", ".join([m for m, p in checkpoints.items() if p == s["model"]] + (["judge"] if s["model"] == cfg.judge.model and cfg.eval.use_judge else []))
    by_model: dict[str, list[dict]] = {}
    for r in res.rows:
        by_model.setdefault(r["model"], []).append(r)
    for model, rows in sorted(by_model.items()):
        ctx.write("eval", model, rows)
    return {"models": sorted(by_model), "rows": len(res.rows), "requests": res.evaluated, "not evaluated": skipped,
            "table": res.uris.get("markdown"), "chart": res.uris.get("chart"), "served": served,
            "manifest": {"eval": {"not_evaluated": skipped, "served": served}}}


def unservable(cfg, path: str | None) -> str | None:
    """Why finr1 cannot serve this checkpoint for the eval here (it is then reported, not evaluated)."""
    if path is None:
        return "its stage trained nothing"
    if not Path(path).is_dir() and (cfg.eval.server == "transformers" or os.environ.get("HF_HUB_OFFLINE") == "1" or vllm_problem(cfg.serve.vllm_python)):
        return f"{path} is not a local model directory" + ("" if cfg.eval.server == "transformers" else " (and vLLM cannot fetch it here)")
    return None


def _report(ctx: Context) -> dict:
    from finr1_core.report import write_run_report

    training = {m: checkpoint_info(ctx.cfg, m) for m in ("sft", "grpo")}
    return write_run_report(ctx.cfg, ctx.store, ctx.options.get("timings") or {}, {m: model_path(ctx.cfg, m) or "–" for m in MODELS},
                            {m: info for m, info in training.items() if info})


EVAL = Stage(
    name="eval",
    inputs=("grpo",),
    outputs=("eval",),
    depends=lambda c: (c.eval, c.train.base_model, c.judge.model),
    body=_eval,
    doc="held-out rows + named benchmarks -> answers of base, sft, grpo and extra endpoints; rules, then the judge; table with 95% CIs",
)

REPORT = Stage(
    name="report",
    inputs=("eval",),
    outputs=(),
    depends=lambda c: (),
    body=_report,
    cached=False,
    doc="everything -> report.md + summary.json",
)
