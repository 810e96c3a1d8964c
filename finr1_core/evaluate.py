"""Evaluation of served models on held-out rows: rule scoring first, then the LLM answer judge
for rows the rules cannot decide (verdict ``unknown``).

Each model is reached over the OpenAI API, exactly as a served model is used in production, so
the same code evaluates a vLLM endpoint or the embedded ``transformers serve``.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Sequence

from finr1_core.extract import extract_answer
from finr1_core.llm import LLMClient, Sampling
from finr1_core.verify import verify

# The seed's results table columns (Fin-R1 README) and the sources they come from.
SEED_COLUMNS = {
    "FinQA": ["finqa"],
    "ConvFinQA": ["convfinqa", "convfinqa_conv"],
    "Ant_Finance": ["ant_finance", "ant_finance_finr1eval"],
    "TFNS": ["tfns"],
    "Finance-Instruct": ["finance_instruct_500k"],
}


async def _eval_rows(client: LLMClient, rows: Sequence[dict], sampling: Sampling, prefix: str, judge=None, rel_tol=0.01) -> list[dict]:
    async def one(r: dict) -> dict:
        out = {
            "record_id": r["record_id"],
            "repo_name": r["repo_name"],
            "answer": r.get("answer"),
            "answer_type": r.get("answer_type"),
        }
        try:
            c = await client.acomplete(r["messages"], sampling, prefix)
            text = prefix + c.text
            out.update(output=text, finish_reason=c.finish_reason, completion_tokens=c.completion_tokens, error=None)
        except Exception as e:  # a failed request is scored incorrect and labelled, never dropped
            out.update(output="", finish_reason=None, completion_tokens=0, error=f"{type(e).__name__}: {e}"[:300])
            text = ""
        pred = extract_answer(text) if text else None
        v = verify(r.get("answer"), pred, r.get("answer_type"), rel_tol=rel_tol)
        out.update(extracted=pred, rule_verdict=v.verdict, judge_score=None, scored_by="rule")
        final = v.verdict
        if v.verdict == "unknown" and judge is not None and text:
            j = await judge.judge(r.get("question", ""), r.get("answer"), text)
            out["judge_score"] = j.score
            out["scored_by"] = "judge"
            final = {1: "correct", 0: "incorrect"}.get(j.score, "unknown")
        out["verdict"] = final
        out["correct"] = final == "correct"
        return out

    return list(await asyncio.gather(*(one(r) for r in rows)))


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
