"""The ``finr1-pipeline`` flow: public finance datasets to a trained, evaluated model.

    data -> distill_score -> filter -> train -> evaluate (+ report)

Each step is a phase flow of its own (``flows/phases.py``). The embedded model server, when the
config uses one, serves the teacher and the judges during distill_score; the evaluation serves
each checkpoint itself. If any shard fails, the
others still finish and are kept; the flow publishes a ``failed-shards`` artifact and ends Failed.
Re-running the same run (``finr1 retry-failed RUN_ID`` or ``prefect flow-run retry``) redoes only
what is missing.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Literal

from prefect import flow
from prefect.states import Failed

# Import transformers' lazy names once, here, in the main thread: shard tasks run in threads, and
# two threads resolving `from transformers import AutoTokenizer` at once raised ImportError.
from transformers import AutoTokenizer  # noqa: F401

from finr1_core import stages
from finr1_core.config import STAGES, PipelineConfig
from flows.phases import data, distill_score, evaluate_models, filter_release, train
from flows.runs import model_server, open_run

StopAfter = Literal[STAGES]  # the stage names, in run order (finr1_core.config.STAGES)


@flow(name="finr1-pipeline", log_prints=False)
def finr1_pipeline(config: str = "configs/embedded.yaml", storage_root: str | None = None, limit: int | None = None,
                   run_id: str | None = None, stop_after: StopAfter | None = None, wait: bool = False):
    """Run the Fin-R1 recipe end to end.

    Args:
        config: Path of the pipeline config (configs/embedded.yaml or configs/production.yaml).
        storage_root: Override the storage root (a local path or s3://bucket/prefix).
        limit: Cap rows per source, for quick runs.
        run_id: Resume or retry an existing run; a new id is made when empty.
        stop_after: Stop after this stage (empty: run every stage).
        wait: When another run holds this run id, wait for it to finish instead of failing at once.
    """
    with open_run(config, run_id, storage_root, limit, wait=wait) as cfg:
        c = PipelineConfig.model_validate(cfg)
        stages.save_run_config(c)  # what `finr1 retry-failed RUN_ID` re-runs with
        run = dict(config=config, run_id=c.run_id, storage_root=c.storage_root, limit=c.limit)
        out = {"run_id": c.run_id, "storage": stages.store_for(c).base, "timings": {}}
        t = out["timings"]

        with timed(t, "data"):
            data(**run, stop_after="ingest" if stop_after == "ingest" else None)
        if stop_after in ("ingest", "prompts"):
            return out
        with timed(t, "distill + score"), model_server(cfg) as url:
            shards = distill_score(**run, score=stop_after != "distill", base_url=url, return_state=True)
        if shards.is_failed():
            return Failed(message=shards.message)
        out["distill"] = shards.result()
        if stop_after in ("distill", "score"):
            return out
        with timed(t, "filter + release"):
            out["split"] = filter_release(**run)
        if stop_after == "split":
            return out
        with timed(t, "train"):
            out.update(train(**run, stop_after="sft" if stop_after == "sft" else None))
        if stop_after in ("sft", "grpo"):
            return out
        with timed(t, "evaluate"):  # the report shows the phases before it; `finr1 run`'s summary shows this one too
            out["report"] = evaluate_models(**run, timings=dict(t))["report"]
        return out


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[name]``."""
    t0 = time.time()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 1)
