"""eval (one call per model: base, sft, grpo) and report."""
from __future__ import annotations

from finr1_core.llm import ClientSpec
from finr1_core.stages.base import Context, Stage
from finr1_core.stages.data import prompt_dicts, prompt_row
from finr1_core.stages.train import model_path

MODELS = ("base", "sft", "grpo")


def eval_sample(rows: list[dict], k: int) -> list[dict]:
    """Up to ``k`` held-out rows, taken round-robin across sources so every source is scored."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["repo_name"], []).append(r)
    out: list[dict] = []
    i = 0
    while len(out) < k and any(i < len(v) for v in by.values()):
        for name in sorted(by):
            if i < len(by[name]) and len(out) < k:
                out.append(by[name][i])
        i += 1
    return out


def _eval(ctx: Context) -> dict:
    from finr1_core.evaluate import evaluate_model
    from finr1_core.judge import AnswerJudge
    from finr1_core.llm import Sampling
    from finr1_core.prompts import build_prompt
    from finr1_core.records import table_to_records

    cfg, model = ctx.cfg, ctx.shard
    path = model_path(cfg, model)
    if path is None:
        return {"model": model, "rows": 0, "reason": f"no {model} checkpoint (its stage trained nothing)"}
    heldout = eval_sample(table_to_records(ctx.store.read_stage("heldout")), cfg.eval.max_rows)
    rows = prompt_dicts([prompt_row(r, build_prompt(r, cfg.prompts)) for r in heldout])
    role = cfg.teacher.model_copy(update={"model": path, "tokenizer": path, "endpoints": cfg.eval.endpoints})
    judge = AnswerJudge(ClientSpec.from_role(cfg.judge, ctx.base_url).build()) if cfg.eval.use_judge else None
    sampling = Sampling(temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)
    results = evaluate_model(ClientSpec.from_role(role, ctx.base_url).build(), rows, sampling, prefix=cfg.prompts.think_prefix, judge=judge, rel_tol=cfg.filter.rel_tol)
    for r in results:
        r["model"] = model
    ctx.write("eval", model, results)
    return {"model": model, "rows": len(results), "accuracy": sum(r["correct"] for r in results) / max(1, len(results))}


def _evaluated(ctx: Context) -> dict | None:
    if model_path(ctx.cfg, ctx.shard) is None:
        return {"model": ctx.shard, "rows": 0, "reason": f"no {ctx.shard} checkpoint (its stage trained nothing)"}
    if not ctx.store.shard_committed("eval", ctx.shard, ctx.hash):
        return None
    return {"model": ctx.shard, "rows": next(e["rows"] for e in ctx.store.shards("eval") if e["shard"] == ctx.shard)}


def _report(ctx: Context) -> dict:
    from finr1_core.report import write_run_report

    return write_run_report(ctx.cfg, ctx.store, ctx.options.get("timings") or {}, {m: model_path(ctx.cfg, m) or "–" for m in MODELS})


EVAL = Stage(
    name="eval",
    inputs=("grpo",),
    outputs=("eval",),
    depends=lambda c: (c.eval, c.train.base_model),
    body=_eval,
    sharded=True,
    done=_evaluated,
    doc="held-out rows -> answers of one model (base, sft or grpo), scored by rules then the judge",
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
