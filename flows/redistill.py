"""``finr1-redistill``: the scheduled, incremental re-distillation.

It distils into a **new** run id, then scores, splits and refreshes the latest release
(``<storage_root>/_release/latest/`` and ``latest.json``). It is incremental through the durable
response cache (``<storage_root>/_cache/responses/``): only prompts whose request key (record id,
rendered prompt, model, sampling, sample index) is not cached go to the teacher, so a new or changed
source record or prompt is paid for, and nothing else.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Failed

from flows.phases import data, distill_score, filter_release
from flows.runs import default_run_id, model_server, open_run
from tasks.stages import refresh_release


@flow(name="finr1-redistill", log_prints=False)
def finr1_redistill(config: str = "configs/embedded.yaml", storage_root: str | None = None, limit: int | None = None,
                    run_id: str | None = None, refresh: bool = True):
    """Incremental re-distillation: a new run id distils only what the response cache lacks, then scores, splits and refreshes the release.

    Args:
        config: Path of the pipeline config (configs/embedded.yaml or configs/production.yaml), relative to the repository root.
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's. The response cache under it is what makes this incremental.
        limit: Cap rows per source.
        run_id: The new run id; empty = redistill-<date>-<flow run id>.
        refresh: Refresh <storage_root>/_release/latest from this run when it completes.
    """
    with open_run(config, run_id or ("redistill-" + default_run_id()), storage_root, limit) as cfg:
        run = dict(config=config, run_id=cfg["run_id"], storage_root=cfg["storage_root"], limit=cfg["limit"])
        with model_server(cfg) as url:
            data(**run)
            shards = distill_score(**run, base_url=url, return_state=True)
        if shards.is_failed():
            return Failed(message=shards.message)
        d = shards.result()
        out = {"run_id": cfg["run_id"], "distill": d, "split": filter_release(**run)}
        publish_redistill_table(cfg["run_id"], d)
        if refresh:
            out["release_latest"] = refresh_release(cfg, d)
        return out


def publish_redistill_table(run_id: str, d: dict) -> None:
    rows = [
        {"measure": "prompts x samples (request keys)", "value": d.get("requests", 0)},
        {"measure": "found in the response cache (not sent)", "value": d.get("cached", 0)},
        {"measure": "sent to the teacher (new or changed)", "value": d.get("requested", 0)},
        {"measure": "paid tokens (prompt + completion)", "value": d.get("paid_prompt_tokens", 0) + d.get("paid_completion_tokens", 0)},
        {"measure": "paid cost (USD)", "value": d.get("paid_cost_usd", 0.0)},
    ]
    create_table_artifact(key="re-distill", table=rows, description=f"incremental re-distill into run {run_id}")
    get_run_logger().info("re-distill: %s of %s requests sent to the teacher, %s from the cache", d.get("requested"), d.get("requests"), d.get("cached"))
