"""The general benchmarks (MATH-500, AIME 2024, CEval, IFEval) through lm-evaluation-harness.

lm-eval runs in a process of its own (:mod:`finr1_core.eval.harness_job`) against the target's
OpenAI-compatible endpoint (lm-eval's ``local-chat-completions`` with ``num_concurrent`` and
``max_retries`` from :class:`EvalSettings`), and its own scorers decide every row: MATH-500 by
lm-eval's ``math_verify`` metric (task ``minerva_math500``, zero-shot), AIME 2024 by the ``aime24``
task's ``exact_match``, CEval by a generative variant of ``ceval-valid`` shipped here
(``harness_tasks/_ceval_gen_yaml``: lm-eval's ``regex`` filter and ``exact_match``), IFEval by
``prompt_level_strict_acc`` (lm-eval's port of the IFEval instruction checkers).

Data: ``--data NAME=PATH`` points the task at local files in the hub's layout (a file or a
folder); without it the task keeps its hub dataset, which fails offline in one line.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from finr1_core.config import finr1_home, repo_env

from .targets import EvalError

# lm-eval task family (what the cache key and each row name) and the hub dataset it reads
TASK = {"math500": "minerva_math500", "aime24": "aime24", "ceval": "ceval-valid-gen", "ifeval": "ifeval"}
HUB = {"math500": "HuggingFaceH4/MATH-500", "aime24": "Maxwell-Jia/AIME_2024", "ceval": "ceval/ceval-exam", "ifeval": "google/IFEval"}
AIME_SAMPLING = (0.6, 0.95)  # AIME 2024: temperature, top_p of the k samples (Pass@1 averaged over k)
DEFAULT_SEED = 1234  # lm-eval's API-model default; sample k is sent with seed + k
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SPLIT = re.compile(r"(?:^|[/_\-.])(val|dev|test)(?:[/_\-.]|$)")


def _files(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in FORMATS and not any(x.startswith(".") for x in f.relative_to(p).parts))


def _format(bench: str, path: str, files: list[Path]) -> str:
    fmts = {FORMATS.get(f.suffix) for f in files}
    if None in fmts or len(fmts) != 1:
        raise EvalError(f"--data {bench}={path}: expected .jsonl/.json, .parquet or .csv files of one kind (found {', '.join(sorted({f.suffix or f.name for f in files}))})")
    return fmts.pop()


def resolve_data(bench: str, path: str) -> dict:
    """Local files in the hub layout -> ``{format, data_files: {"test": [...]}}`` (CEval: per subject)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise EvalError(f"--data {bench}={path}: no such file or folder")
    files = _files(p)
    if not files:
        raise EvalError(f"--data {bench}={path}: no .jsonl/.json/.parquet/.csv file in it")
    if bench == "ceval":
        return _ceval_data(bench, path, p, files)
    if bench == "math500" and p.is_dir():  # HuggingFaceH4/MATH-500: test.jsonl
        files = [f for f in files if f.name.startswith("test")] or files
    return {"format": _format(bench, path, files), "data_files": {"test": [str(f.resolve()) for f in files]}}


def _ceval_data(bench: str, path: str, p: Path, files: list[Path]) -> dict:
    """ceval/ceval-exam: ``<subject>/val-*.parquet`` (or ``<subject>/val/*.parquet``,
    ``<subject>/ceval-exam-val.parquet``) or the archive's ``val/<subject>_val.csv``."""
    if p.is_file():
        raise EvalError(f"--data {bench}={path}: expected the ceval-exam folder (subject folders, or val/<subject>_val.csv)")
    subjects: dict[str, dict] = {}
    for f in files:
        rel = f.relative_to(p).parts
        if len(rel) < 2:
            continue
        if rel[0] in ("val", "dev", "test"):
            split, subject = rel[0], f.stem.removesuffix(f"_{rel[0]}")
        else:
            m = _SPLIT.search("/" + "/".join(rel[1:]))
            if not m:
                continue
            split, subject = m.group(1), rel[0]
        if split == "val":
            subjects.setdefault(subject, {"data_files": {"val": []}})["data_files"]["val"].append(f)
    if not subjects:
        raise EvalError(f"--data {bench}={path}: no val split found (expected <subject>/val-*.parquet or val/<subject>_val.csv)")
    out = {}
    for sub, d in sorted(subjects.items()):
        fs = sorted(d["data_files"]["val"])
        out[sub] = {"format": _format(bench, path, fs), "data_files": {"val": [str(f.resolve()) for f in fs]}}
    return {"subjects": out}


def sampling_key(bench: str, s) -> dict:
    """What a harness row's answer depends on (besides target, row and sample): in its cache key."""
    t, top_p = AIME_SAMPLING if bench == "aime24" else (s.sampling.temperature, s.sampling.top_p)
    seed = DEFAULT_SEED if s.sampling.seed is None else s.sampling.seed
    return {"harness": f"lm-eval==0.4.13:{TASK[bench]}", "temperature": t, "top_p": top_p, "max_tokens": s.sampling.max_tokens, "seed": seed}


def _gen(bench: str, s) -> dict:
    k = sampling_key(bench, s)
    g = {"max_gen_toks": k["max_tokens"], "temperature": k["temperature"], "do_sample": k["temperature"] > 0}
    if k["temperature"] > 0:
        g["top_p"] = k["top_p"]
    return g


def nltk_data_dir() -> Path:
    return finr1_home() / "nltk_data"


def _run_job(job: dict, on_line: Callable[[dict], None] | None = None, extra_env: dict | None = None) -> dict:
    """Run :mod:`finr1_core.eval.harness_job` on ``job``; progress lines go to ``on_line``."""
    job = {**job, "nltk_data": str(nltk_data_dir())}
    with tempfile.TemporaryDirectory(prefix="finr1-harness-") as tmp:
        jp, op, lp = Path(tmp, "job.json"), Path(tmp, "out.json"), Path(tmp, "stderr.log")
        jp.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
        env = repo_env(TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1", **(extra_env or {}))
        with open(lp, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "finr1_core.eval.harness_job", str(jp), str(op)], stdout=subprocess.PIPE,
                                    stderr=err, env=env, text=True, start_new_session=True)
            try:
                for line in proc.stdout:
                    if line.startswith("FINR1-PROGRESS ") and on_line:
                        on_line(json.loads(line[len("FINR1-PROGRESS "):]))
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        if not op.exists():
            tail = " ".join(lp.read_text(errors="replace").split()[-40:])
            raise EvalError(f"lm-eval harness process exited {proc.returncode} without a result: {tail[-400:]}")
        res = json.loads(op.read_text(encoding="utf-8"))
    if "error" in res:
        msg = res["error"]
        b = res.get("benchmark")
        if b in HUB and not (job["benchmarks"].get(b) or {}).get("data"):
            msg += f"; no hub here? pass --data {b}=PATH (a local copy of {HUB[b]} in its hub layout)"
        raise EvalError(msg)
    return res


def plan(benches: list[str], data: dict[str, tuple[str, str]], limit: int | None) -> dict[str, dict]:
    """Per benchmark ``{rows, source, quarantined, note, harness: True}``; rows: row_id, task, question."""
    specs = {}
    for b in benches:
        _, path = data.get(b, (None, None))
        specs[b] = {"data": resolve_data(b, path) if path else None}
    res = _run_job({"mode": "plan", "limit": limit, "benchmarks": specs})
    out = {}
    for b in benches:
        rows = res["plan"][b]
        if not rows:
            raise EvalError(f"benchmark {b}: lm-eval task {TASK[b]} found no rows in {data.get(b, (None, HUB[b]))[1]}")
        src = data[b][1] if b in data else f"hub:{HUB[b]}"
        out[b] = {"rows": rows, "source": src, "quarantined": 0, "harness": True,
                  "note": f"{len(rows)} rows through lm-eval task {TASK[b]}{' (per subject)' if b == 'ceval' else ''}", "specs": specs[b]}
    return out


def run_items(t, base_url: str, items: list[dict], specs: dict[str, dict], s, on_result: Callable[[dict, dict], None],
              on_progress: Callable[[bool], None] | None = None) -> None:
    """Evaluate pending harness ``items`` (row_id, benchmark, sample) of target ``t`` at ``base_url``;
    ``on_result(item, record)`` gets every (row, sample) back, failures included."""
    passes: dict[int, dict] = {}
    for it in items:
        b = it["benchmark"]
        p = passes.setdefault(it["sample"], {"sample": it["sample"], "seed": sampling_key(b, s)["seed"] + it["sample"], "benchmarks": {}})
        p["benchmarks"].setdefault(b, {"gen": _gen(b, s), "row_ids": []})["row_ids"].append(it["row_id"])
    job = {"mode": "run", "benchmarks": {b: specs[b] for b in {it["benchmark"] for it in items}},
           "model": {"base_url": base_url, "model": t.request_model, "num_concurrent": s.max_concurrency, "max_retries": s.max_retries + 1,
                     "timeout": max(1, int(s.timeout_s)), "seed": DEFAULT_SEED, "think_end_token": "</think>", "max_gen_toks": s.sampling.max_tokens},
           "passes": [passes[k] for k in sorted(passes)]}
    key = t.api_key if t.api_key and t.api_key != "EMPTY" else ""  # to the child's environment, never into the job file
    res = _run_job(job, (lambda line: on_progress(bool(line.get("failed")))) if on_progress else None, {"FINR1_HARNESS_API_KEY": key})
    by = {(r["benchmark"], r["row_id"], r["sample"]): r for r in res["records"]}
    for it in items:
        rec = by.get((it["benchmark"], it["row_id"], it["sample"]))
        if rec is None:
            rec = {"task": TASK[it["benchmark"]], "output": "", "extracted": None, "gold": None, "metrics": {}, "correct": False,
                   "error": "lm-eval returned no result for this row", "question": it.get("question", "")}
        on_result(it, rec)
