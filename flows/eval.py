"""The finr1-eval flow: `finr1 eval` as a Prefect deployment (same parameters), with the table as
a Markdown and a table artifact and progress in the flow-run log."""
from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from finr1_core.eval import EvalSettings, run_eval
from finr1_core.eval.table import table_rows
from finr1_core.llm import Sampling


def _progress_logger(every_s: float = 10.0):
    logger = get_run_logger()
    last = [0.0]

    def on_progress(p: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or p["done"] == p["total"]:
            last[0] = now
            eta = "?" if p["eta_s"] is None else f"{p['eta_s']:.0f} s"
            logger.info("eval %s: %d/%d rows, %d failed, ETA %s", p["model"], p["done"], p["total"], p["failed"], eta)

    return on_progress


@flow(name="finr1-eval", log_prints=True)
def finr1_eval(models: list[str], out: str, benchmarks: str = "finqa,convfinqa,ant_finance,tfns,finance_instruct",
               data: list[str] | None = None, limit: int | None = None, judge: str | None = None, max_tokens: int = 1024,
               temperature: float = 0.0, samples: int = 1, concurrency: int = 8) -> dict:
    """Evaluate named models (NAME=PATH or NAME=URL#MODEL) on named benchmarks; cached per row under ``out``.

    Args:
        models: Named targets: NAME=PATH (a local checkpoint finr1 serves) or NAME=URL#MODEL (an OpenAI-compatible endpoint).
        out: Where results, the table, the chart and the per-row cache go (a local path or s3://).
        benchmarks: Comma-separated benchmark names (finqa, convfinqa, ant_finance, tfns, finance_instruct, fineval, cfbenchmark, financeiq).
        data: BENCHMARK=PATH items pointing a benchmark at any file or folder `finr1 ingest --path` accepts.
        limit: Rows per benchmark; empty = all.
        judge: The answer judge for what the rules cannot decide: a local path or URL#MODEL; empty = rules only.
        max_tokens: Completion tokens per answer.
        temperature: Sampling temperature (0 = greedy).
        samples: Samples per row; accuracy is Pass@1 averaged over them.
        concurrency: Requests in flight per endpoint.
    """
    settings = EvalSettings(sampling=Sampling(temperature, 1.0 if temperature == 0 else 0.95, max_tokens), samples=samples,
                            max_concurrency=concurrency)
    res = run_eval(models, benchmarks, data or [], limit, out, judge=judge, on_progress=_progress_logger(), settings=settings)
    create_markdown_artifact(res.markdown, key="finr1-eval-table", description="finr1 eval: accuracy with 95% Wilson intervals")
    create_table_artifact(table_rows(res.table), key="finr1-eval-cells", description="finr1 eval: one row per model")
    return {"table": res.table, "uris": res.uris, "evaluated": res.evaluated}
