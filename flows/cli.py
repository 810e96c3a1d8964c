"""The `finr1` command line. Pure commands call finr1_core; `run`/`retry-failed` run Prefect flows."""
from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(help="finr1: the Fin-R1 recipe as an observable, resumable Prefect pipeline.", no_args_is_help=True)
console = Console()


def fail(msg: str) -> None:
    """One clear line on stderr, exit 2."""
    print(f"error: {msg}", file=sys.stderr)  # plain print: rich would wrap the line
    raise typer.Exit(2)


# Commands are added below, grouped by stage. Keep each command a thin shell over finr1_core.


# --------------------------------------------------------------------------- pipeline (lead)
@app.command("prepare-model")
def prepare_model(force: bool = typer.Option(False, help="Redo the conversion even if it is done")) -> None:
    """Convert the embedded model (SmolLM2-135M-Instruct GGUF) to bf16 safetensors, once."""
    from finr1_core.modelprep import ModelPrepError, prepare_embedded_model

    try:
        prepare_embedded_model(force=force, log=lambda m: console.print(m, highlight=False))
    except ModelPrepError as e:
        fail(str(e))


def _run_flow(config: str | None, storage: str | None, limit: int | None, run_id: str | None, stop_after: str | None) -> None:
    import os
    import time

    from finr1_core.config import ConfigError, load_config

    # Validate before any work starts: a bad key fails here, in one line.
    try:
        load_config(config, {"storage_root": storage, "limit": limit})
    except ConfigError as e:
        fail(str(e))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from flows.pipeline import finr1_pipeline

    t0 = time.time()
    state = finr1_pipeline(config=config or "configs/embedded.yaml", storage_root=storage, limit=limit, run_id=run_id, stop_after=stop_after, return_state=True)
    if not state.is_completed():
        fail(f"run failed: {state.message}")
    out = state.result()
    console.rule("[bold green]finr1 run complete")
    console.print(f"run id:   {out['run_id']}")
    if out.get("report"):
        console.print(f"report:   {out['report']}")
        console.print(f"datasets: {out['storage']}/release (sft/rl parquet + README card), {out['storage']}/sft, {out['storage']}/rl")
        console.print(f"models:   {out['storage']}/models/sft, {out['storage']}/models/grpo")
        for k, v in (out.get("timings") or {}).items():
            console.print(f"  {k:<8} {v:7.1f} s")
    console.print(f"total:    {time.time() - t0:.1f} s")


@app.command("run")
def run(
    config: str = typer.Option(None, "--config", help="Pipeline config (default configs/embedded.yaml)"),
    storage: str = typer.Option(None, "--storage", help="Storage root: a local path or s3://bucket/prefix"),
    limit: int = typer.Option(None, "--limit", help="Cap rows per source"),
    run_id: str = typer.Option(None, "--run-id", help="Resume this run id (new when empty)"),
    stop_after: str = typer.Option(None, "--stop-after", help="Stop after this stage"),
) -> None:
    """Run the whole pipeline (the finr1-pipeline flow) with Prefect; logs show here."""
    _run_flow(config, storage, limit, run_id, stop_after)


@app.command("retry-failed")
def retry_failed(
    run_id: str = typer.Argument(..., help="The run whose failed shards to redo"),
    config: str = typer.Option(None, "--config"),
    storage: str = typer.Option(None, "--storage"),
) -> None:
    """Re-run a run: committed shards are skipped, only failed or missing ones are redone."""
    _run_flow(config, storage, None, run_id, None)

if __name__ == "__main__":  # pragma: no cover
    app()
