"""The ``finr1-pipeline`` flow: sources to a trained, evaluated, servable model.

ingest → prompts → distill (one task per shard, Ray inside) → score (one task per shard)
→ split + release → SFT → GRPO → evaluate {base, sft, grpo} → report.

If any shard fails, the others still finish and are kept; the flow stops before the split,
publishes a summary of the failed shards and their reasons, and ends Failed. Re-running the same
run (``finr1 retry-failed RUN_ID`` or ``prefect flow-run retry``) redoes only what is missing.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Literal

# Import transformers' lazy names once, here, in the main thread: shard tasks run in threads, and
# two threads resolving `from transformers import AutoTokenizer` at once raised ImportError.
from transformers import AutoTokenizer  # noqa: F401

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from finr1_core import pipeline
from finr1_core.config import PipelineConfig
from finr1_core.serving import ManagedServer
from tasks import stages


@contextlib.contextmanager
def model_server(cfg: PipelineConfig) -> Iterator[str | None]:
    """The embedded profile's managed server (stopped by PID on exit, failure or Ctrl-C);
    ``None`` for external endpoints (production vLLM)."""
    if cfg.serve.kind != "managed":
        yield None
        return
    log = get_run_logger()
    srv = ManagedServer(host=cfg.serve.host, port=cfg.serve.port, continuous_batching=cfg.serve.continuous_batching,
                        startup_timeout_s=cfg.serve.startup_timeout_s, cb_num_blocks=cfg.serve.cb_num_blocks, cb_block_size=cfg.serve.cb_block_size)
    t0 = time.time()
    srv.start()
    log.info("model server up at %s (pid %s, %.1f s, log %s)", srv.base_url, srv.pid, time.time() - t0, srv.log_path)
    try:
        yield srv.base_url
    finally:
        srv.stop()
        log.info("model server stopped")


def _run_shards(task, cfg: dict, shards: list[str], base_url: str | None) -> tuple[list[str], dict[str, str]]:
    futures = {s: task.submit(cfg, s, base_url) for s in shards}
    ok, failed = [], {}
    for s, f in futures.items():
        f.wait()
        st = f.state
        if st.is_completed():
            ok.append(s)
        else:
            try:
                f.result(raise_on_failure=True)
                failed[s] = st.message or st.name
            except Exception as e:  # the reason of the shard's last attempt
                failed[s] = f"{type(e).__name__}: {e}"[:500]
    return ok, failed


@flow(name="finr1-pipeline", log_prints=False)
def finr1_pipeline(
    config: str = "configs/embedded.yaml",
    storage_root: str | None = None,
    limit: int | None = None,
    run_id: str | None = None,
    stop_after: Literal["ingest", "prompts", "distill", "score", "split", "sft", "grpo", "eval"] | None = None,
):
    """Run the Fin-R1 recipe end to end.

    Args:
        config: Path of the pipeline config (configs/embedded.yaml or configs/production.yaml).
        storage_root: Override the storage root (a local path or s3://bucket/prefix).
        limit: Cap rows per source, for quick runs.
        run_id: Resume or retry an existing run; a new id is made when empty.
        stop_after: Stop after this stage (ingest, prompts, distill, score, split, sft, grpo, eval).
    """
    log = get_run_logger()
    # ops (issue 6): a run id that survives `prefect flow-run retry`, and task results persisted
    # under the storage root (s3: a saved RemoteFileSystem block). See flows/ops.py.
    from flows.ops import bound_stages, default_run_id

    c = pipeline.load(config, run_id=run_id or default_run_id(), storage_root=storage_root, limit=limit)
    stages = bound_stages(c.storage_root)  # noqa: F811 - the same tasks, results under the storage root
    cfg = c.public_dict()
    log.info("run %s, storage %s, profile %s", c.run_id, c.storage_root, c.profile)
    pipeline.save_run_config(c)  # what `finr1 retry-failed RUN_ID` re-runs with
    timings: dict[str, float] = {}

    def t(name, fn, *a):
        t0 = time.time()
        out = fn(*a)
        timings[name] = timings.get(name, 0.0) + time.time() - t0
        return out

    t("ingest", stages.ingest, cfg)
    if stop_after == "ingest":
        return {"run_id": c.run_id}
    shards = t("prompts", stages.prompts, cfg)["shards"]
    if stop_after == "prompts":
        return {"run_id": c.run_id}
    with model_server(c) as base_url:
        ok, failed = t("distill", _run_shards, stages.distill_shard, cfg, shards, base_url)
        scored_ok, score_failed = t("score", _run_shards, stages.score_shard, cfg, ok, base_url)
        failed.update({f"score:{k}": v for k, v in score_failed.items()})
        if failed:
            md = "## Failed shards\n\n| shard | reason |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in failed.items())
            retry = f"finr1 retry-failed {c.run_id}" + ("" if c.storage_root == "runs" else f" --storage {c.storage_root}")
            md += f"\n\nRetry only these: `{retry}` or `prefect flow-run retry <flow-run-id>`."
            create_markdown_artifact(key="failed-shards", markdown=md, description="Shards that failed in this run")
            log.error("%d shard(s) failed: %s", len(failed), failed)
            return Failed(message=f"{len(failed)} of {len(shards)} shard(s) failed; completed shards are kept. Retry: {retry}")
        stages.finish_stage(cfg, "distill", shards, pipeline.distill_hash(c))
        stages.finish_stage(cfg, "scored", shards, pipeline.score_hash(c))
        stages.stage_summary(cfg)  # ops (issue 6): rows in/out, pass rates, tokens, cost; Parquet paths
        if stop_after in ("distill", "score"):
            return {"run_id": c.run_id}
        t("split", stages.split_release, cfg)
        if stop_after == "split":
            return {"run_id": c.run_id}
        t("sft", stages.train_sft, cfg)
        if stop_after == "sft":
            return {"run_id": c.run_id}
        t("grpo", stages.train_grpo, cfg)
        if stop_after == "grpo":
            return {"run_id": c.run_id}
        for m in ("base", "sft", "grpo"):
            t("eval", stages.evaluate, cfg, m, base_url)
    out = stages.report(cfg, timings)
    log.info("report: %s", out["report"])
    return {"run_id": c.run_id, "report": out["report"], "timings": timings, "storage": pipeline.store_for(c).base}
