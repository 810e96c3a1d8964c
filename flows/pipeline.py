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

from finr1_core import pipeline
from finr1_core.config import PipelineConfig
from finr1_core.serving import ManagedServer


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
    # ops (issue 6): a run id that survives `prefect flow-run retry`, and task results persisted
    # under the storage root (s3: a saved RemoteFileSystem block). See flows/ops.py.
    from flows.ops import bound_stages, default_run_id, run_range

    c = pipeline.load(config, run_id=run_id or default_run_id(), storage_root=storage_root, limit=limit)
    get_run_logger().info("run %s, storage %s, profile %s", c.run_id, c.storage_root, c.profile)
    pipeline.save_run_config(c)  # what `finr1 retry-failed RUN_ID` re-runs with
    return run_range(c, c.public_dict(), bound_stages(c.storage_root), "ingest", stop_after or "report")
