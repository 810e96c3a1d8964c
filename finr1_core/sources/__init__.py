"""Source registry and ``load_source``: one loader per Fin-R1 source, one normalized record schema.

``load_source(name, path=None, hub_id=None, split=None, limit=None)`` reads either local files
(json, jsonl, csv, parquet, arrow, a directory of those, FinCUGE positional arrays; local or
``s3://``) or a Hugging
Face dataset through ``datasets.load_dataset(hub_id, split=...)``, and returns an
:class:`IngestResult` with ``records`` (see :mod:`finr1_core.records`) and ``quarantine`` rows
(each with a one-line ``reason``). ``rows_in == len(records) + len(quarantine)``, always.

Module rule (``module`` column): each source has a default (table below); Ant_Finance follows its
category (金融知识 -> 金融专业知识, 金融逻辑 -> 金融推理类业务知识, others -> 金融非推理类业务知识) and
CFBenchmark its subset (金融计算 -> 推理类, 金融知识 -> 专业知识, others -> 非推理类). A
``math_reasoning`` item whose module would be 金融非推理类业务知识 becomes 金融推理类业务知识.

``math_reasoning`` rule: always True for FinQA, ConvFinQA (both copies) and FinPEE (financial
calculation sets); always False for TFNS, FinCUGE (classification / extraction / summaries) and
Quant-Trading-Instruct (code). Elsewhere :func:`finr1_core.sources.parse.is_math` decides per
record: numeric answers; FinanceIQ subject 精算师/金融数学; text asking for a calculation
(计算/求出/试求/..., "calculate"/"how much"/"percentage change"...); or a question with two or more
numbers whose options are all numbers (with units) or whose blank asks for a quantity (``（）万元``).
"""
from __future__ import annotations

from typing import Any

from ..records import MODULES
from . import loaders as L
from .base import IngestResult, SourceInfo, run_loader
from .io import IngestError, iter_hub, list_files, read_file

CODE, KNOWLEDGE, NON_REASONING, REASONING = MODULES

__all__ = ["SOURCES", "SourceInfo", "IngestResult", "IngestError", "load_source", "SEED_MIX"]

_LOCAL = ("json", "jsonl", "csv", "parquet")

SOURCES: dict[str, SourceInfo] = {
    s.name: s
    for s in [
        SourceInfo(
            "finqa", "ibm-research/finqa", _LOCAL, ("numeric", "true_false"), "en", "train", "MIT (czyssrs/FinQA); hub copy CC-BY-4.0",
            REASONING, True, 2948, "FinQA: 10-K text + table, numeric reasoning; gold = qa.exe_ans",
            "pre_text/table/qa.question/qa.exe_ans", L.finqa_matches, L.finqa_convert),
        SourceInfo(
            "convfinqa", "FinGPT/fingpt-convfinqa", _LOCAL, ("numeric", "true_false"), "en", "train", "MIT (ConvFinQA)",
            REASONING, True, 7629, "ConvFinQA turn level (instruction/input/output; input = context + earlier turns)",
            "instruction/input/output (or original annotation.dialogue_break)", L.convfinqa_matches, L.convfinqa_convert),
        SourceInfo(
            "convfinqa_conv", None, _LOCAL, ("numeric", "true_false"), "en", "train", "MIT (PoT copy of ConvFinQA dev)",
            REASONING, True, None, "ConvFinQA conversation level (PoT copy): questions/answer/text/table/programs",
            "questions/answer/text/table", L.convfinqa_conv_matches, L.convfinqa_conv_convert),
        SourceInfo(
            "tfns", "zeroshot/twitter-financial-news-sentiment", _LOCAL, ("label",), "en", "train", "MIT",
            NON_REASONING, False, 2451, "Twitter Financial News Sentiment: 0 Bearish, 1 Bullish, 2 Neutral",
            "text/label", L.tfns_matches, L.tfns_convert),
        SourceInfo(
            "fincuge", "Maciel/FinCUGE-Instruction", _LOCAL + ("positional arrays",), ("label", "free_text"), "zh", "train", "none stated",
            NON_REASONING, False, 2000, "BBT-FinCUGE 8 tasks (finfe finqa fincqa finna finre finnsp finnl finese)",
            "task + named fields, or positional arrays under <task>/", L.fincuge_matches, L.fincuge_convert),
        SourceInfo(
            "financeiq", "Duxiaoman-DI/FinanceIQ", _LOCAL, ("mcq_single",), "zh", "train", "CC BY-NC-SA 4.0",
            KNOWLEDGE, None, 2596, "FinanceIQ exam MCQ: Question, A-D, Answer",
            "Question/A/B/C/D/Answer (or instruction/output)", L.financeiq_matches, L.financeiq_convert),
        SourceInfo(
            "finpee", None, _LOCAL, ("free_text", "numeric"), "zh", "train", "unknown",
            KNOWLEDGE, True, 179, "FinPEE finance postgraduate-exam calculation questions (worked solutions)",
            "question/answer", L.finpee_matches, L.finpee_convert),
        SourceInfo(
            "ant_finance", None, _LOCAL, ("mcq_single", "mcq_multi", "true_false"), "zh", "train", "CC BY 4.0",
            NON_REASONING, None, 1548, "Fin-Eva v1 Ant part: question, A-E, answer letter or 是/否",
            "question/answer (+ A-E)", L.ant_finance_matches, L.ant_finance_convert),
        SourceInfo(
            "ant_finance_finr1eval", None, _LOCAL, ("mcq_single", "true_false"), "zh", "eval", "CC BY 4.0 (Fin-Eva)",
            NON_REASONING, None, None, "Ant_Finance as evaluated by Fin-R1 (instruction/input/output)",
            "instruction/output", L.instruction_matches, L.ant_finance_finr1eval_convert, "test"),
        SourceInfo(
            "fincorpus", "Duxiaoman-DI/FinCorpus", _LOCAL, ("mcq_single", "mcq_multi", "true_false", "numeric", "free_text"), "zh", "train", "unknown",
            KNOWLEDGE, None, 29288, "FinCorpus exam questions (instruction with options; output letter/text/list/对错)",
            "instruction/output", L.instruction_matches, L.fincorpus_convert),
        SourceInfo(
            "quant_trading_instruct", "lumalik/Quant-Trading-Instruct", _LOCAL, ("code",), "en", "train", "unknown",
            CODE, False, 152, "Quant-Trading-Instruct (FinanceQT): QuantConnect/LEAN Python algorithms",
            "instruction|question + output|answer", L.quant_matches, L.quant_convert),
        SourceInfo(
            "finance_instruct_500k", "Josephgflowers/Finance-Instruct-500k", _LOCAL, ("free_text", "numeric", "code"), "auto", "train", "Apache-2.0 (hub card)",
            NON_REASONING, None, 11300, "Finance-Instruct-500k: system/user/assistant (also instruction/input/output, messages)",
            "user/assistant, instruction/output or messages", L.finance_instruct_matches, L.finance_instruct_convert),
        SourceInfo(
            "fineval", "SUFE-AIFLM-Lab/FinEval", _LOCAL, ("mcq_single",), "zh", "eval", "Apache-2.0",
            KNOWLEDGE, None, None, "FinEval MCQ: question, A-D, answer (+ explanation)",
            "question/A/B/C/D/answer", L.fineval_matches, L.fineval_convert, "test"),
        SourceInfo(
            "cfbenchmark", "TongjiFinLab/CFBenchmark", _LOCAL + ("arrow",), ("mcq_single", "label", "free_text", "true_false"), "zh", "eval",
            "Apache-2.0 code; non-commercial research preview",
            NON_REASONING, None, None, "CFBenchmark OpenFinData (MC, extraction, rubric) + Basic (instruction/input/response)",
            "question (+ A-E/answer/criterium*) or instruction/input/response", L.cfbenchmark_matches, L.cfbenchmark_convert, "test"),
    ]
}

# The Fin-R1-Data composition (README): the production default per-source cap.
SEED_MIX: dict[str, int] = {k: v.seed_rows for k, v in SOURCES.items() if v.seed_rows}


def get_source(name: str) -> SourceInfo:
    if name not in SOURCES:
        raise IngestError(f"unknown source {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name]


def load_source(
    name: str,
    path: str | None = None,
    hub_id: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    hub_kwargs: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> IngestResult:
    """Load one source from ``path`` (a local path or an fsspec URI such as ``s3://bucket/dir``,
    opened with ``storage_options`` over the environment's) or the hub (``hub_id``, default: the
    registry's).

    ``limit`` caps the rows read (in file order). ``hub_kwargs`` go to ``datasets.load_dataset``
    (e.g. ``data_files=`` for the packaged ``json``/``csv``/``parquet`` builders).
    """
    info = get_source(name)
    if limit is not None and limit < 1:
        raise IngestError(f"limit must be >= 1 (got {limit})")
    task_of = L.fincuge_task_of if name == "fincuge" else None
    skipped: list[str] = []
    if path:
        files, skipped = list_files(path, storage_options)
        readers = (read_file(f, storage_options) for f in files)
    else:
        hid = hub_id or info.hub_id
        if not hid:
            raise IngestError(f"source {name}: no path given and no hub id known (pass --path)")
        readers = iter_hub(hid, split, limit=limit, **(hub_kwargs or {}))
    res = run_loader(info, readers, split_arg=split, limit=limit, task_of=task_of)
    res.skipped_files = skipped
    return res
