"""The pipeline's current eval-stage helpers, kept until the stage calls
:func:`finr1_core.eval.from_config.eval_from_config`; scoring is :func:`finr1_core.eval.score_row`.

Each model is reached over the OpenAI API, exactly as a served model is used in production, so
the same code evaluates a vLLM endpoint or the embedded ``transformers serve``.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Sequence

from finr1_core.llm import LLMClient, Sampling

# The seed's results table columns (Fin-R1 README) and the sources they come from.
SEED_COLUMNS = {
    "FinQA": ["finqa"],
    "ConvFinQA": ["convfinqa", "convfinqa_conv"],
    "Ant_Finance": ["ant_finance", "ant_finance_finr1eval"],
    "TFNS": ["tfns"],
    "Finance-Instruct": ["finance_instruct_500k"],
}


async def _eval_rows(client: LLMClient, rows: Sequence[dict], sampling: Sampling, prefix: str, judge=None, rel_tol=0.01) -> list[dict]:
    """Scored through :func:`finr1_core.eval.score_row` by a fixed pool of workers (never one task per row)."""
    from finr1_core.eval import EvalSettings, score_row

    settings = EvalSettings(sampling=sampling, rel_tol=rel_tol)
    out: list[dict | None] = [None] * len(rows)
    queue: asyncio.Queue = asyncio.Queue()
    for i, r in enumerate(rows):
        queue.put_nowait((i, r))

    async def worker() -> None:
        while not queue.empty():
            i, r = queue.get_nowait()
            item = {"messages": r["messages"], "answer": r.get("answer"), "answer_type": r.get("answer_type"),
                    "question": r.get("question", ""), "sample": 0}
            res = await score_row(client, judge, item, prefix, settings)
            out[i] = {"record_id": r["record_id"], "repo_name": r["repo_name"], "answer": r.get("answer"),
                      "answer_type": r.get("answer_type"), **res}

    cap = sum(max(1, e.max_concurrency or client.max_concurrency) for e in client.endpoints)
    await asyncio.gather(*(worker() for _ in range(max(1, min(len(rows), cap)))))
    return out  # type: ignore[return-value]


def evaluate_model(client: LLMClient, rows: Sequence[dict], sampling: Sampling, prefix: str = "<think>\n", judge=None, rel_tol=0.01) -> list[dict]:
    async def run():
        try:
            return await _eval_rows(client, rows, sampling, prefix, judge, rel_tol)
        finally:
            await client.aclose()
            if judge is not None and hasattr(judge, "client"):
                await judge.client.aclose()

    return asyncio.run(run())


def accuracy_table(results: dict[str, list[dict]]) -> dict[str, dict[str, float | None]]:
    """{model: {column: accuracy}} over the seed's columns plus every other source seen, and 'Average'."""
    table: dict[str, dict[str, float | None]] = {}
    sources = sorted({r["repo_name"] for rows in results.values() for r in rows})
    seed_sources = {s for v in SEED_COLUMNS.values() for s in v}
    columns = dict(SEED_COLUMNS)
    for s in sources:
        if s not in seed_sources:
            columns[s] = [s]
    for model, rows in results.items():
        by = defaultdict(list)
        for r in rows:
            by[r["repo_name"]].append(bool(r["correct"]))
        row: dict[str, float | None] = {}
        for col, srcs in columns.items():
            vals = [x for s in srcs for x in by.get(s, [])]
            row[col] = (sum(vals) / len(vals)) if vals else None
        allv = [bool(r["correct"]) for r in rows]
        row["Average"] = (sum(allv) / len(allv)) if allv else None
        table[model] = row
    return table
