"""Evaluation: named models (local checkpoints or endpoints) x named benchmarks, cached per row,
scored by rules then the Fin-R1 answer judge, reported with 95% Wilson intervals.

Public entry points: :func:`run_eval`, :func:`eval_from_config`, :class:`ModelTarget`,
:func:`parse_model_spec`, :data:`BENCHMARKS`, :func:`wilson_ci`, :func:`build_table`,
:func:`to_markdown`.
"""
from .benchmarks import BENCHMARKS, SEED_FINANCE, Benchmark, load_benchmark_rows, parse_benchmarks, parse_data
from .runner import EvalResult, EvalSettings, run_eval, score_row
from .stats import wilson_ci
from .table import REFERENCE, bar_chart_png, build_table, to_markdown
from .targets import EvalError, ModelTarget, parse_model_spec

__all__ = [
    "BENCHMARKS", "SEED_FINANCE", "Benchmark", "load_benchmark_rows", "parse_benchmarks", "parse_data",
    "EvalResult", "EvalSettings", "run_eval", "score_row", "wilson_ci", "REFERENCE", "bar_chart_png",
    "build_table", "to_markdown", "EvalError", "ModelTarget", "parse_model_spec",
]
