"""The benchmark registry and the finance benchmarks' rows (the general benchmarks, kind
``harness``, are read and scored by lm-evaluation-harness: :mod:`finr1_core.eval.harness`).

A finance benchmark reads through the project's own source loaders (:mod:`finr1_core.sources`),
so ``--data NAME=PATH`` accepts anything ``finr1 ingest --path`` accepts (a file or a folder, local
or ``s3://``). Rows come from the eval/test splits: when the data carries split labels, only rows
labelled test/eval/validation/dev are used; a file with no such rows is used whole (the result
says so in ``note``). Without ``--data`` the source's hub copy (its ``test`` split) is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from finr1_core.prompts import build_prompt
from finr1_core.sources import IngestError, load_source

from .targets import EvalError

EVAL_SPLITS = ("test", "eval", "validation", "valid", "dev")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the name given to --benchmarks and used in the table's column order
    label: str  # the table column
    sources: tuple[str, ...] = ()  # finr1 sources whose loaders can read it, tried in order
    kind: str = "finance"  # finance (rules + judge) | harness (an external harness's scorers)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("finqa", "FinQA", ("finqa",)),
        Benchmark("convfinqa", "ConvFinQA", ("convfinqa", "convfinqa_conv")),
        Benchmark("ant_finance", "Ant_Finance", ("ant_finance_finr1eval", "ant_finance")),
        Benchmark("tfns", "TFNS", ("tfns",)),
        Benchmark("finance_instruct", "Finance-Instruct", ("finance_instruct_500k",)),
        Benchmark("fineval", "FinEval", ("fineval",)),
        Benchmark("cfbenchmark", "CFBenchmark", ("cfbenchmark",)),
        Benchmark("financeiq", "FinanceIQ", ("financeiq",)),
        Benchmark("math500", "MATH-500", kind="harness"),
        Benchmark("aime24", "AIME 2024", kind="harness"),
        Benchmark("ceval", "CEval", kind="harness"),
        Benchmark("ifeval", "IFEval", kind="harness"),
    ]
}
SEED_FINANCE = ("finqa", "convfinqa", "ant_finance", "tfns", "finance_instruct")


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise EvalError(f"--benchmarks: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def parse_benchmarks(text: str | list) -> list[Benchmark]:
    """Comma-separated names, or a list of names and :class:`Benchmark` objects (order kept)."""
    items = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    items = [b if isinstance(b, Benchmark) else get_benchmark(b) for b in items if b]
    if not items:
        raise EvalError("--benchmarks: give at least one name")
    return list({b.name: b for b in items}.values())


def benchmark_for_data_key(key: str) -> Benchmark:
    """``--data`` keys may name a benchmark (``ant_finance``, ``math500``) or one of its sources (``ant_finance_finr1eval``).
    A general (harness) benchmark's PATH is a local copy of its hub dataset (see :mod:`finr1_core.eval.harness`)."""
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    for b in BENCHMARKS.values():
        if key in b.sources:
            return b
    raise EvalError(f"--data {key}=...: not a benchmark or source (known: {', '.join(BENCHMARKS)})")


def parse_data(specs: list[str]) -> dict[str, tuple[str, str]]:
    """``["finqa=PATH", "ant_finance_finr1eval=s3://b/x"]`` -> ``{benchmark: (key, path)}``."""
    out: dict[str, tuple[str, str]] = {}
    for s in specs:
        key, sep, path = s.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise EvalError(f"--data {s!r}: expected SOURCE=PATH")
        b = benchmark_for_data_key(key.strip())
        out[b.name] = (key.strip(), path.strip())
    return out


def _eval_rows(records: list[dict]) -> tuple[list[dict], str]:
    held = [r for r in records if str(r.get("split") or "").lower() in EVAL_SPLITS]
    if held:
        return held, f"{len(held)} of {len(records)} rows from eval/test splits"
    return records, f"no eval/test split labels: all {len(records)} rows used"


def _load(bench: Benchmark, key: str | None, path: str | None, limit: int | None):
    sources = (key,) if key and key != bench.name and key in bench.sources else bench.sources
    errors = []
    for src in sources:
        try:
            res = load_source(src, path=path, split=None if path else "test", limit=None if path else limit)
        except IngestError as e:
            errors.append(str(e))
            continue
        except (OSError, RuntimeError, ValueError) as e:
            errors.append(f"{src}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        if res.records:
            return src, res
        errors.append(f"{src}: no row matched its layout ({len(res.quarantine)} quarantined)")
    where = path or "the hub (test split)"
    hint = "" if path else f"; pass --data {bench.name}=PATH"
    raise EvalError(f"benchmark {bench.name}: cannot read {where}: {errors[-1] if errors else 'no loader'}{hint}")


def load_benchmark_rows(bench: Benchmark, path: str | None = None, limit: int | None = None, key: str | None = None, prompts_cfg=None) -> dict:
    """``{rows, source, quarantined, note}``; each row: row_id, question, answer, answer_type, messages."""
    if bench.kind != "finance":
        raise EvalError(f"benchmark {bench.name} runs through a harness, not the finance loaders")
    src, res = _load(bench, key, path, limit)
    records, note = _eval_rows(res.records)
    records = records[:limit] if limit else records
    rows = []
    for r in records:
        p = build_prompt(r, prompts_cfg)
        rows.append({
            "row_id": r["id"], "source": src, "question": r["question"], "answer": r["answer"],
            "answer_type": r["answer_type"], "messages": p["messages"],
        })
    return {"rows": rows, "source": src, "quarantined": len(res.quarantine), "note": note}
