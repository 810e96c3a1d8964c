"""Thin Prefect tasks over ``finr1_core.stages.run_stage``: one task per stage, or per shard."""
from __future__ import annotations

import contextvars
import logging
import math
import threading
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, update_progress_artifact

from finr1_core import stages
from tasks.artifacts import publish_ingest_distribution, publish_report, publish_split_summary, publish_training
from tasks.common import SHARD_OPTS, STAGE_OPTS, artifact_key, config_from


@task(name="ingest", **STAGE_OPTS)
def ingest(cfg: dict) -> dict:
    out = stages.run_stage(config_from(cfg), "ingest")
    publish_ingest_distribution(config_from(cfg))
    get_run_logger().info("ingest: %s records, skipped=%s", out.get("rows"), out["skipped"])
    return out


@task(name="prompts", **STAGE_OPTS)
def prompts(cfg: dict, ingested: dict | None = None) -> list[str]:
    """The prompt shards (``ingested`` only orders this task after ingest)."""
    out = stages.run_stage(config_from(cfg), "prompts")
    get_run_logger().info("prompts: %s rows in %s shards", out.get("rows"), len(out["shards"]))
    return out["shards"]


class _Artifact:
    """A progress artifact updated from a background thread, latest value wins: the caller never
    blocks on the Prefect API, and after one failed call (the API is gone, e.g. its temporary
    server died with a Ctrl-C) no further update is tried."""

    def __init__(self, key: str, description: str):
        self.key, self.description = key, description
        self.id = None
        self.pending: float | None = None
        self.busy = False
        self.dead = False
        self.lock = threading.Lock()
        self.ctx = contextvars.copy_context()  # the task run's context: the artifact links to it

    def post(self, pct: float) -> None:
        with self.lock:
            self.pending = pct
            if self.busy or self.dead:
                return
            self.busy = True
        threading.Thread(target=self.ctx.copy().run, args=(self._drain,), name=f"artifact-{self.key}", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self.lock:
                pct, self.pending = self.pending, None
                if pct is None or self.dead:
                    self.busy = False
                    return
            try:
                if self.id is None:
                    self.id = create_progress_artifact(progress=pct, key=self.key, description=self.description)
                else:
                    update_progress_artifact(artifact_id=self.id, progress=pct)
            except Exception as e:  # noqa: BLE001 - progress is best effort
                with self.lock:
                    self.dead, self.busy = True, False
                logging.getLogger(__name__).warning("progress artifact %s: %s; no further updates", self.key, type(e).__name__)
                return


class _Progress:
    """Distill progress: a Prefect progress artifact (about once a second) and a log line (every 5 s)."""

    def __init__(self, shard: str):
        self.shard, self.t_art, self.t_log = shard, 0.0, 0.0
        self.art = _Artifact(artifact_key(f"distill-{shard}"), f"distill {shard}")

    def __call__(self, done: int, total: int, tok_s: float = 0.0, eta_s: float | None = None) -> None:
        now = time.monotonic()
        pct = 100.0 * done / max(1, total)
        if now - self.t_art > 1.0 or done == total:
            self.art.post(pct)
            self.t_art = now
        if now - self.t_log > 5.0 or done == total:
            eta = f"{eta_s:.0f}s" if eta_s is not None and math.isfinite(eta_s) else "?"
            get_run_logger().info("distill %s: %d/%d rows, %.1f tok/s, ETA %s", self.shard, done, total, tok_s, eta)
            self.t_log = now


@task(name="distill-shard", tags=["teacher"], **SHARD_OPTS)
def distill_shard(cfg: dict, shard: str, base_url: str | dict | None) -> dict:
    out = stages.run_stage(config_from(cfg), "distill", shard, base_url=base_url, progress=_Progress(shard))
    get_run_logger().info("distill %s: %s", shard, {k: v for k, v in out.items() if k != "errors"})
    return out


@task(name="score-shard", tags=["judge"], **SHARD_OPTS)
def score_shard(cfg: dict, distilled: dict, base_url: str | dict | None) -> dict:
    """Score the shard that ``distilled`` (the distill task's result) committed."""
    out = stages.run_stage(config_from(cfg), "score", distilled["shard"], base_url=base_url)
    get_run_logger().info("score %s: %s", distilled["shard"], out)
    return out


@task(name="finish-stage", persist_result=False)
def finish_stage(cfg: dict, stage: str, shards: list[str]) -> dict:
    return stages.finish_stage(config_from(cfg), stage, shards)


@task(name="split-release", **STAGE_OPTS)
def split_release(cfg: dict) -> dict:
    c = config_from(cfg)
    out = stages.run_stage(c, "split")
    publish_split_summary(c, out)
    return out


@task(name="train-sft", **STAGE_OPTS)
def train_sft(cfg: dict) -> dict:
    """SFT as its own job; its log lines stream into this task run's log."""
    out = stages.run_stage(config_from(cfg), "sft", on_line=get_run_logger().info)
    publish_training(out)
    return out


@task(name="train-grpo", **STAGE_OPTS)
def train_grpo(cfg: dict, sft: dict | None = None) -> dict:
    """GRPO from the SFT checkpoint as its own job (``sft``, the SFT task's result, orders this after it)."""
    out = stages.run_stage(config_from(cfg), "grpo", on_line=get_run_logger().info)
    publish_training(out)
    return out


class _EvalProgress:
    """Eval progress: a Prefect progress artifact (never blocking) and a log line every 10 s, with the ETA."""

    def __init__(self):
        self.art, self.t = _Artifact("eval", "evaluation requests"), 0.0

    def __call__(self, p: dict) -> None:
        self.art.post(100.0 * p["done"] / max(1, p["total"]))
        if time.monotonic() - self.t > 10 or p["done"] == p["total"]:
            eta = p.get("eta_s")
            get_run_logger().info("eval: %d/%d requests (%d failed), ETA %s", p["done"], p["total"], p["failed"],
                                  f"{eta:.0f}s" if eta is not None and math.isfinite(eta) else "?")
            self.t = time.monotonic()


@task(name="evaluate", tags=["judge"], **STAGE_OPTS)
def evaluate(cfg: dict, trained: dict | None = None) -> dict:
    """Evaluate every checkpoint of the run (and the config's extra endpoints); ``trained`` only
    orders this after training."""
    out = stages.run_stage(config_from(cfg), "eval", on_progress=_EvalProgress(), log=get_run_logger().warning)
    get_run_logger().info("eval: %s", out)
    return out


@task(name="report", persist_result=False)
def report(cfg: dict, evaluated: dict | None = None, timings: dict | None = None) -> dict:
    c = config_from(cfg)
    out = stages.run_stage(c, "report", timings=timings or {})
    publish_report(c, out)
    return {k: v for k, v in out.items() if k != "markdown"}


@task(name="refresh-release", persist_result=False)
def refresh_release(cfg: dict, distill: dict) -> dict:
    """Publish this run's release as ``<storage_root>/_release/latest.json`` (a new version, pointer last)."""
    from finr1_core.release import refresh_latest

    c = config_from(cfg)
    store = stages.store_for(c)
    pointer = refresh_latest(c.storage_root, c.run_id, storage_options=store.storage_options, info={"distill": distill})
    create_link_artifact(key="release-latest", link=pointer["uri"], description=f"latest release (run {c.run_id})")
    return pointer


@task(name="stage-summary", persist_result=False)
def stage_summary(cfg: dict, *upstream) -> list[dict]:
    """Publish the stage-summary table and the Parquet-paths artifact of a run."""
    from tasks.artifacts import publish_stage_summary

    return publish_stage_summary(config_from(cfg))


def publish_failed_shards(run_id: str, storage_root: str, failed: dict[str, str], total: int) -> str:
    """A ``failed-shards`` artifact naming each failed shard and its reason; returns the message."""
    retry = f"finr1 retry-failed {run_id}" + ("" if storage_root == "runs" else f" --storage {storage_root}")
    md = "## Failed shards\n\n| shard | reason |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in failed.items())
    md += f"\n\nCompleted shards are kept. Retry only these: `prefect flow-run retry <flow-run-id>` (or the UI's Retry), or `{retry}`."
    create_markdown_artifact(key="failed-shards", markdown=md, description="Shards that failed in this run")
    return f"{len(failed)} of {total} shard(s) failed; completed shards are kept. Retry: {retry}, or retry the flow run."
