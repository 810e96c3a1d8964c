"""The pipeline's phases, each a flow of its own (deployable alone, see deployments/prefect.yaml):

    data -> distill_score -> filter -> train -> evaluate

A phase works on one run id. Every phase but ``data`` needs the earlier phases' output to be
complete and says so in one line when it is not. Work already committed is skipped by the stage
runner, so re-running a phase only does what is missing.
"""
from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, unmapped
from prefect.futures import PrefectFuture
from prefect.states import Failed

from finr1_core import stages
from finr1_core.config import PipelineConfig
from flows.runs import model_server, open_run, require_run_id, start_ray
from tasks.stages import (
    distill_shard,
    evaluate,
    finish_stage,
    ingest,
    prompts,
    publish_failed_shards,
    report,
    score_shard,
    split_release,
    stage_summary,
    train_grpo,
    train_sft,
)

DEFAULT_CONFIG = "configs/embedded.yaml"
TOTALS = ("requests", "cached", "requested", "completed", "rows", "prompt_tokens", "completion_tokens", "paid_prompt_tokens", "paid_completion_tokens")


@flow(name="finr1-data", log_prints=False)
def data(config: str = DEFAULT_CONFIG, run_id: str | None = None, storage_root: str | None = None, limit: int | None = None,
         stop_after: Literal["ingest"] | None = None) -> list[str]:
    """Ingest every source into validated records, then build the prompt shards.

    Args:
        config: Path of the pipeline config, relative to the repository root.
        run_id: The run to work on; empty = a new run id.
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source.
        stop_after: "ingest" to stop before the prompts.
    """
    with open_run(config, run_id, storage_root, limit) as cfg:
        ingested = ingest(cfg)
        if stop_after == "ingest":
            return []
        return prompts(cfg, ingested)


@flow(name="finr1-distill-score", log_prints=False)
def distill_score(config: str = DEFAULT_CONFIG, run_id: str | None = None, storage_root: str | None = None, limit: int | None = None,
                  shards: list[str] | None = None, score: bool = True, base_url: str | dict | None = None):
    """Distil every prompt shard with the teacher (one task per shard, Ray workers inside) and score each
    shard as soon as its traces are committed (rule verifier, answer judge, reasoning judge, route).

    Args:
        config: Path of the pipeline config, relative to the repository root.
        run_id: The run to work on (its prompts must be complete).
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source (must match the run's).
        shards: Only these shards (e.g. ["shard-00002"]); empty = every shard.
        score: Score the traces too (false = distil only).
        base_url: URL of an already running managed model server (or the managed servers' {engine, urls: {model: url}}); empty = start them when the config needs them.
    """
    with open_run(config, require_run_id(run_id, "distill-score"), storage_root, limit) as cfg:
        everything = _prompt_shards(cfg)
        todo = _select(everything, shards)
        start_ray(cfg)
        with model_server(cfg, base_url) as url:
            distilled = distill_shard.map(unmapped(cfg), todo, unmapped(url))
            scored = score_shard.map(unmapped(cfg), distilled, unmapped(url)) if score else []
            failed = _failures(todo, distilled, scored)
        if failed:
            get_run_logger().error("%d shard(s) failed: %s", len(failed), failed)
            return Failed(message=publish_failed_shards(cfg["run_id"], cfg["storage_root"], failed, len(todo)))
        if len(todo) == len(everything):
            finished = [finish_stage(cfg, "distill", todo)] + ([finish_stage(cfg, "score", todo)] if score else [])
            stage_summary(cfg, *finished)
        return _totals([f.result() for f in distilled])


@flow(name="finr1-filter", log_prints=False)
def filter_release(config: str = DEFAULT_CONFIG, run_id: str | None = None, storage_root: str | None = None, limit: int | None = None) -> dict:
    """Route, dedup and decontaminate the scored traces, write the sft/rl splits and release the dataset with its card.

    Args:
        config: Path of the pipeline config, relative to the repository root.
        run_id: The run to work on (its score stage must be complete).
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source (must match the run's).
    """
    with open_run(config, require_run_id(run_id, "filter"), storage_root, limit) as cfg:
        return split_release(cfg)


@flow(name="finr1-train", log_prints=False)
def train(config: str = DEFAULT_CONFIG, run_id: str | None = None, storage_root: str | None = None, limit: int | None = None,
          stop_after: Literal["sft"] | None = None) -> dict:
    """SFT on the released sft split, then GRPO (format and accuracy rewards) from the SFT checkpoint.

    Args:
        config: Path of the pipeline config, relative to the repository root.
        run_id: The run to work on (its release must be complete).
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source (must match the run's).
        stop_after: "sft" to skip GRPO.
    """
    with open_run(config, require_run_id(run_id, "train"), storage_root, limit) as cfg:
        sft = train_sft(cfg)
        if stop_after == "sft":
            return {"sft": sft}
        return {"sft": sft, "grpo": train_grpo(cfg, sft)}


@flow(name="finr1-evaluate", log_prints=False)
def evaluate_models(config: str = DEFAULT_CONFIG, run_id: str | None = None, storage_root: str | None = None, limit: int | None = None,
                    timings: dict | None = None) -> dict:
    """Evaluate the base, SFT and GRPO checkpoints and the config's extra endpoints (rules, then the judge; 95% intervals) and write the run report.

    Args:
        config: Path of the pipeline config, relative to the repository root.
        run_id: The run to work on.
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source (must match the run's).
        timings: Seconds per phase, shown in the report.
    """
    with open_run(config, require_run_id(run_id, "evaluate"), storage_root, limit) as cfg:
        return report(cfg, evaluate(cfg), timings)


# ------------------------------------------------------------------------------------- helpers
def _prompt_shards(cfg: dict) -> list[str]:
    store = stages.store_for(PipelineConfig.model_validate(cfg))
    manifest = store.stage_manifest("prompts")
    if not manifest:
        raise RuntimeError(f"run {cfg['run_id']}: the prompts stage is not complete under {store.base}; run the data phase first")
    return [e["shard"] for e in manifest["shards"]]


def _select(everything: list[str], shards: list[str] | None) -> list[str]:
    if not shards:
        return everything
    unknown = sorted(set(shards) - set(everything))
    if unknown:
        raise ValueError(f"unknown shard(s) {unknown}; this run has {everything}")
    return [s for s in everything if s in set(shards)]


def _failures(shards: list[str], distilled: list[PrefectFuture], scored: list[PrefectFuture]) -> dict[str, str]:
    """Wait for every shard; the reason of each one that failed, distill first."""
    failed: dict[str, str] = {}
    for i, shard in enumerate(shards):
        for label, futures in (("", distilled), ("score:", scored)):
            if i >= len(futures):
                continue
            futures[i].wait()
            if label and shard in failed:
                continue  # its score never ran: the distill failure is the reason
            try:
                futures[i].result(raise_on_failure=True)
            except Exception as e:  # the reason of the shard's last attempt
                failed[label + shard] = f"{type(e).__name__}: {e}"[:500]
    return failed


def _totals(results: list[dict]) -> dict:
    tot = {k: sum(int(r.get(k) or 0) for r in results) for k in TOTALS}
    tot["cost_usd"] = round(sum(float(r.get("cost_usd") or 0) for r in results), 6)
    tot["paid_cost_usd"] = round(sum(float(r.get("paid_cost_usd") or 0) for r in results), 6)
    return tot
