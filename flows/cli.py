"""The `finr1` command line. Pure commands call finr1_core; `run`/`retry-failed` run Prefect flows."""
from __future__ import annotations

import sys

import typer
from rich.console import Console

from finr1_core.config import STAGES

app = typer.Typer(help="finr1: the Fin-R1 recipe as an observable, resumable Prefect pipeline.", no_args_is_help=True)
console = Console()


STOP_AFTER_HELP = f"Stop after this stage, one of: {', '.join(STAGES)} (default: run every stage)"


def fail(msg: str) -> None:
    """One clear line on stderr, exit 2."""
    print(f"error: {msg}", file=sys.stderr)  # plain print: rich would wrap the line
    raise typer.Exit(2)


def check_target(run_id: str, storage: str) -> None:
    """The run id and storage root of a command that works on an existing run, checked as
    `finr1 run` checks them (one line naming the argument, exit 2)."""
    from finr1_core.config import ConfigError
    from finr1_core.preflight import check_run_target

    try:
        check_run_target(run_id, storage)
    except ConfigError as e:
        fail(str(e))


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


def _run_flow(config: str | None, storage: str | None, limit: int | None, run_id: str | None, stop_after: str | None,
              wait: bool = False, check_endpoints: bool = True, keep_temp: bool = False, cleanup: list | None = None) -> None:
    import os
    import time

    from finr1_core.config import ConfigError, load_config
    from finr1_core.lease import LeaseHeld, check_free
    from finr1_core.preflight import PreflightError, check_run_options, preflight

    # Fail before work, in one line: options, the config, the endpoints, a run id in use.
    try:
        check_run_options(stop_after=stop_after, limit=limit, run_id=run_id)
        cfg = load_config(config, {"storage_root": storage, "limit": limit})
        if check_endpoints:
            preflight(cfg)
        if run_id and not wait:
            check_free(cfg.storage_root, run_id)
    except (ConfigError, PreflightError, LeaseHeld) as e:
        fail(str(e))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's driver otherwise takes SIGTERM over with absl's failure handler, which aborts the
    # process 3 s later (exit -6) while the clean stop (flows/stopping.py) is still caching answers
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if keep_temp:
        os.environ["FINR1_KEEP_TEMP"] = "1"  # Ray's session folder stays (finr1_core.distill's shutdown reads it)
    # no network here, and its heartbeat races the ephemeral server for the SQLite lock
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a busy machine needs longer than Prefect's 20 s to start the ephemeral server
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from finr1_core.distill import install_exit_hooks

    install_exit_hooks()  # no Ray process this run starts outlives it (Ctrl-C, SIGTERM, exit)
    from flows.pipeline import finr1_pipeline
    from flows.stopping import run_stoppable

    t0 = time.time()
    # Ctrl-C / SIGTERM: no new teacher request, answers in flight cached, every process ended (flows/stopping.py)
    state = run_stoppable(lambda: finr1_pipeline(config=config or "configs/embedded.yaml", storage_root=storage, limit=limit, run_id=run_id,
                                                 stop_after=stop_after, wait=wait, return_state=True), cleanup=cleanup)
    if not state.is_completed():
        fail(f"run failed: {state.message}")
    console.rule("[bold green]finr1 run complete")
    for line in run_summary(state.result(), time.time() - t0):
        console.print(line, highlight=False, markup=False)


def run_summary(out: dict, total_s: float) -> list[str]:
    """What `finr1 run` prints under its "finr1 run complete" rule (README.md shows an example)."""
    lines = [f"run id:   {out['run_id']}"]
    if out.get("report"):
        lines += [f"report:   {out['report']}",
                  f"datasets: {out['storage']}/release (sft/rl parquet + README card), {out['storage']}/sft, {out['storage']}/rl",
                  f"models:   {out['storage']}/models/ (sft, grpo; the report says if a stage trained nothing)"]
        lines += [f"  {k:<18} {v:7.1f} s" for k, v in (out.get("timings") or {}).items()]
    return lines + [f"total:    {total_s:.1f} s"]


@app.command("run")
def run(
    config: str = typer.Option(None, "--config", help="Pipeline config (default configs/embedded.yaml)"),
    storage: str = typer.Option(None, "--storage", help="Storage root: a local path or s3://bucket/prefix"),
    limit: int = typer.Option(None, "--limit", help="Cap rows per source"),
    run_id: str = typer.Option(None, "--run-id", help="Resume this run id (new when empty)"),
    stop_after: str = typer.Option(None, "--stop-after", help=STOP_AFTER_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print prompts per source and route, estimated tokens, cost and wall time; call no model"),
    wait: bool = typer.Option(False, "--wait", help="If another run holds this run id, wait for it instead of failing"),
    no_preflight: bool = typer.Option(False, "--no-preflight", help="Skip asking each teacher/judge endpoint for /v1/models before any work"),
    keep_temp: bool = typer.Option(False, "--keep-temp", help="Keep the temporary files of the run (Ray's session folder) for debugging"),
) -> None:
    """Run the whole pipeline (the finr1-pipeline flow) with Prefect; logs show here."""
    if dry_run:
        from finr1_core import estimate
        from finr1_core.config import ConfigError, load_config

        try:
            cfg = load_config(config, {"storage_root": storage, "limit": limit})
        except ConfigError as e:
            fail(str(e))
        console.print(estimate.to_markdown(estimate.dry_run(cfg)), highlight=False, markup=False)
        return
    _run_flow(config, storage, limit, run_id, stop_after, wait=wait, check_endpoints=not no_preflight, keep_temp=keep_temp)


@app.command("retry-failed")
def retry_failed(
    run_id: str = typer.Argument(..., help="The run whose failed shards to redo"),
    storage: str = typer.Option("runs", "--storage", help="Storage root the run lives under"),
    stop_after: str = typer.Option(None, "--stop-after", help=STOP_AFTER_HELP),
    sets: list[str] = typer.Option(None, "--set", help="Fix the saved config first: dotted KEY=VALUE (repeatable), e.g. teacher.endpoints.0.base_url=http://host:8000/v1; recorded in the run's lineage.jsonl"),
    wait: bool = typer.Option(False, "--wait", help="If another run holds this run id, wait for it instead of failing"),
    no_preflight: bool = typer.Option(False, "--no-preflight", help="Skip asking each teacher/judge endpoint for /v1/models before any work"),
    keep_temp: bool = typer.Option(False, "--keep-temp", help="Keep the temporary files (the run's config copy, Ray's session folder) for debugging"),
) -> None:
    """Re-run a run with the config it was started with: committed shards are skipped, only the
    failed or missing ones are redone (no response is paid for twice)."""
    import os
    import tempfile

    import yaml

    from finr1_core import stages
    from finr1_core.lineage import amend_run_config

    check_target(run_id, storage)
    try:
        cfg = amend_run_config(storage, run_id, sets) if sets else stages.load_run_config(storage, run_id)
    except ValueError as e:
        fail(str(e))
    for s in sets or []:
        console.print(f"set {s} (recorded in {storage}/{run_id}/lineage.jsonl)", highlight=False, markup=False)
    for stage, missing in stages.pending_shards(cfg).items():
        console.print(f"{stage}: {len(missing)} shard(s) to redo{': ' + ', '.join(missing) if missing else ''}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"finr1-{run_id}-", delete=False) as f:
        yaml.safe_dump(cfg.public_dict(), f, allow_unicode=True)

    def remove_config() -> None:
        if keep_temp:
            print(f"kept: {f.name}", flush=True)
        elif os.path.exists(f.name):
            os.unlink(f.name)

    try:
        _run_flow(f.name, storage, None, run_id, stop_after, wait=wait, check_endpoints=not no_preflight, keep_temp=keep_temp,
                  cleanup=[remove_config])
    finally:
        remove_config()


# ---------------------------------------------------------------- ingest: sources, ingest
@app.command("sources")
def sources_cmd() -> None:
    """List every source: hub id, formats, answer types, language, role, licence."""
    from rich.table import Table

    from finr1_core.sources import SOURCES

    t = Table(title="finr1 sources")
    for col in ("name", "hub id", "formats", "answer types", "lang", "role", "licence"):
        t.add_column(col, overflow="fold")
    for s in SOURCES.values():
        t.add_row(s.name, s.hub_id or "-", ", ".join(s.formats), ", ".join(s.answer_types), s.language, s.role, s.licence)
    (console if console.is_terminal else Console(width=300)).print(t)  # piped: do not squeeze to 80 columns


@app.command("ingest")
def ingest_cmd(
    source: str = typer.Option(..., "--source", help="Source name (see `finr1 sources`)"),
    path: str = typer.Option(None, "--path", help="File or directory: a local path or s3:// URI (json, jsonl, csv, parquet, arrow); s3 endpoint/keys from AWS_* env"),
    out: str = typer.Option(..., "--out", help="Output directory or s3:// URI"),
    hub_id: str = typer.Option(None, "--hub-id", help="Hugging Face dataset id (when no --path)"),
    split: str = typer.Option(None, "--split", help="Split name (hub: which split to load)"),
    limit: int = typer.Option(None, "--limit", min=1, help="Read at most this many rows"),
) -> None:
    """Load one source and write <out>/records/<source>.parquet and <out>/quarantine/<source>.parquet."""
    from finr1_core.ingest import IngestError, ingest, summarize

    try:
        counts = ingest(source, path, out, hub_id=hub_id, split=split, limit=limit)
    except IngestError as e:
        fail(str(e))
    except (OSError, RuntimeError) as e:
        fail(f"ingest {source}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    console.print(summarize(counts), highlight=False, markup=False)
    if counts["answer_types"]:
        console.print("answer types: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["answer_types"].items())), highlight=False, markup=False)
    for f in counts["skipped_files"]:
        console.print(f"skipped (not a data file): {f}", highlight=False, markup=False)
    console.print(f"records: {counts['records_uri']}\nquarantine: {counts['quarantine_uri']}", highlight=False, markup=False)
# ---------------------------------------------------------------- end ingest

# ---------------------------------------------------------------- verify: rescoring JSONL
@app.command("verify")
def verify_cmd(
    file: str = typer.Argument(..., help="JSONL, one object per line: gold, prediction, optional answer_type, optional question ('-' = stdin)"),
    out: str = typer.Option(None, "--out", help="Output JSONL (default: stdout). Each row: the input plus verdict, extracted, verify_reason"),
    rel_tol: float = typer.Option(0.01, "--rel-tol", help="Relative tolerance for numbers"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Pass bad lines through (verdict unknown, an error field) instead of failing"),
) -> None:
    """Rescore predictions with the rule verifier (verdict: correct / incorrect / unknown).

    A bad line (not JSON, not an object, no gold/prediction, unknown answer_type) stops the command
    with one line naming FILE:LINE and nothing is written, unless --skip-bad is given.
    """
    import json as _json
    import os as _os

    from finr1_core.verify import BadLine, verify_lines

    try:
        fh = sys.stdin if file == "-" else open(file, encoding="utf-8")
    except OSError as e:
        fail(f"{file}: cannot read ({e.strerror})")
    try:
        with fh:
            rows = list(verify_lines(fh, rel_tol=rel_tol, skip_bad=skip_bad))
    except BadLine as e:
        fail(f"{file}:{e.line_no}: {str(e).split(': ', 1)[1]}")
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text")
    text = "".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out:
        tmp = f"{out}.tmp-{_os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        _os.replace(tmp, out)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    counts = {k: sum(1 for r in rows if r["verdict"] == k) for k in ("correct", "incorrect", "unknown")}
    bad = sum(1 for r in rows if "error" in r and "line" in r)
    Console(stderr=True).print(f"verified {len(rows)} rows: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                               + (f" ({bad} bad lines passed through)" if bad else ""), highlight=False)


# ---------------------------------------------------------------- end verify

# ---------------------------------------------------------------- ops: local Prefect server
server_app = typer.Typer(help="Local Prefect server, finr1-process worker and deployments (make server / make server-down).", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("up")
def server_up_cmd(
    port: int = typer.Option(4200, "--port", help="Server port on --host"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (keep loopback unless a proxy with auth is in front)"),
    home: str = typer.Option(None, "--home", help="PREFECT_HOME, worker.json and logs (default $FINR1_HOME/prefect)"),
    teacher_limit: int = typer.Option(1, "--teacher-limit", min=1, help="Tag concurrency limit 'teacher': distill shards at once (1 suits the embedded CPU server; raise it for vLLM)"),
    redistill_cron: str = typer.Option(None, "--redistill-cron", envvar="FINR1_REDISTILL_CRON", help="Cron (UTC) of the re-distill deployment (default from deployments/prefect.yaml: Mondays 03:00)"),
    deploy: bool = typer.Option(True, "--deploy/--no-deploy", help="Run prefect deploy --all"),
    startup_timeout: float = typer.Option(180, "--startup-timeout", min=1, help="Seconds to wait for the server's /api/health"),
) -> None:
    """`prefect server start --background` (SQLite, or Postgres via PREFECT_API_DATABASE_CONNECTION_URL), the pool, the teacher limit, a worker; deploy."""
    from flows.server import ServerError, server_up

    try:
        st = server_up(host=host, port=port, home=home, teacher_limit=teacher_limit, redistill_cron=redistill_cron, deploy=deploy,
                       log=lambda m: console.print(m, highlight=False, markup=False), startup_timeout_s=startup_timeout)
    except ServerError as e:
        fail(str(e))
    console.print(f"UI: {st['ui_url']}   (export PREFECT_API_URL={st['api_url']} to use the prefect CLI)", highlight=False, markup=False)
    console.print(f"run: PREFECT_API_URL={st['api_url']} prefect deployment run 'finr1-pipeline/embedded' --param limit=4", highlight=False, markup=False)


@server_app.command("down")
def server_down_cmd(home: str = typer.Option(None, "--home", help="As given to `finr1 server up`")) -> None:
    """Stop the worker (its process group) and then the server (`prefect server stop`)."""
    from flows.server import server_down

    server_down(home=home, log=lambda m: console.print(m, highlight=False, markup=False))
# ---------------------------------------------------------------- end ops



# ---------------------------------------------------------------- release: publish to the Hugging Face hub
release_app = typer.Typer(help="Publish a run's released dataset.", no_args_is_help=True)
app.add_typer(release_app, name="release")


@release_app.command("push")
def release_push_cmd(
    run_id: str = typer.Argument(..., help="The run whose release to publish"),
    repo: str = typer.Option(..., "--repo", help="Hugging Face dataset repo, ORG/NAME"),
    storage: str = typer.Option("runs", "--storage", help="Storage root the run lives under (local path or s3://)"),
    private: bool = typer.Option(False, "--private", help="Create the dataset repo as private"),
    timeout: float = typer.Option(20.0, "--timeout", min=1, help="Seconds before one HTTP call to the hub gives up"),
) -> None:
    """Publish <storage>/<run_id>/release to the hub as a dataset (HF_TOKEN from the environment)."""
    from finr1_core.release import ReleaseError, push_release
    from finr1_core.storage import join

    check_target(run_id, storage)
    try:
        push_release(join(storage, run_id, "release"), repo, private=private, timeout_s=timeout,
                     log=lambda m: console.print(m, highlight=False, markup=False))
    except ReleaseError as e:
        fail(str(e))


# ---------------------------------------------------------------- integrity: check a run's shards
@app.command("check")
def check_cmd(
    run_id: str = typer.Argument(..., help="The run to check"),
    storage: str = typer.Option("runs", "--storage", help="Storage root the run lives under"),
    quick: bool = typer.Option(False, "--quick", help="Sizes and a fast hash (xxh3; ETags on object stores) instead of sha256"),
) -> None:
    """List every stage of a run with its shards (ok, missing, damaged, failed) and the command
    that repairs them. Exit 0 only when the run is whole: every expected shard committed and
    intact, every stage complete (1 otherwise)."""
    from finr1_core.stages import expected_shards
    from finr1_core.storage import Store, check_run

    check_target(run_id, storage)
    store = Store(storage, run_id)
    if not store.exists(store.uri("config.json")) and not store.stages():
        fail(f"no run {run_id!r} under {storage}")
    lines, ok = check_run(store, deep=not quick, expected=expected_shards(store))
    for line in lines:
        print(line)
    raise typer.Exit(0 if ok else 1)
# ---------------------------------------------------------------- end check

# ---------------------------------------------------------------- eval and serve
@app.command("eval")
def eval_cmd(
    model: list[str] = typer.Option(..., "--model", help="NAME=PATH (local checkpoint, served for the duration) or NAME=URL#MODEL (key from $FINR1_EVAL_KEY_<NAME> or $OPENAI_API_KEY); repeatable"),
    benchmarks: str = typer.Option(",".join(("finqa", "convfinqa", "ant_finance", "tfns", "finance_instruct")), "--benchmarks", help="Comma-separated benchmark names (see finr1_core.eval.BENCHMARKS)"),
    data: list[str] = typer.Option([], "--data", help="SOURCE=PATH: a finance benchmark (or source) from any file/folder `finr1 ingest --path` accepts, local or s3://; math500/aime24/ceval/ifeval: a local copy in its hub layout (docs/eval.md); repeatable"),
    limit: int = typer.Option(None, "--limit", min=1, help="Rows per benchmark"),
    out: str = typer.Option(..., "--out", help="Output URI (local or s3://): per-row cache, results.parquet, table.md/json, chart.png"),
    judge: str = typer.Option(None, "--judge", help="Answer judge for what rules cannot decide: PATH or URL#MODEL (none: undecided rows count as incorrect)"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1),
    judge_max_tokens: int = typer.Option(1024, "--judge-max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    samples: int = typer.Option(1, "--samples", min=1, help="Samples per row (Pass@1 averaged over them)"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight per endpoint"),
    rpm: float = typer.Option(None, "--rpm", help="Requests per minute per endpoint"),
    no_reference: bool = typer.Option(False, "--no-reference", help="Leave out Fin-R1's published reference rows"),
    think_prefix: str = typer.Option("<think>\n", "--think-prefix", help="Forced start of a local model's answer (a recipe's think_prefix); '' for none"),
    server: str = typer.Option("transformers", "--server", help="What serves a local checkpoint (the config's eval.server): transformers or vllm (where vLLM cannot start, one line says so and transformers serves)"),
) -> None:
    """Evaluate named models on named benchmarks; a re-run evaluates only what is not cached."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from finr1_core.eval import EvalError, EvalSettings, run_eval
    from finr1_core.eval.from_config import engine_server
    from finr1_core.llm import Sampling
    from finr1_core.serving import ServerError
    from finr1_core.sources import IngestError

    if server not in ("transformers", "vllm"):
        fail(f"--server must be transformers or vllm (got {server!r})")
    settings = EvalSettings(sampling=Sampling(temperature, 1.0 if temperature == 0 else 0.95, max_tokens), samples=samples,
                            max_concurrency=concurrency, rpm=rpm, judge_max_tokens=judge_max_tokens,
                            prefix=think_prefix.replace("\\n", "\n"))  # a shell gives "\\n" literally
    served: list[dict] = []  # what served each local checkpoint (engine, start-up seconds)
    serve = engine_server(server, log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True), record=served)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("eval", total=None, failed=0)

        def on_progress(p: dict) -> None:
            bar.update(task, total=p["total"], completed=p["done"], failed=p["failed"], description=f"eval {p['model']}")

        try:
            res = run_eval(model, benchmarks, data, limit, out, judge=judge, on_progress=on_progress, settings=settings,
                           reference=not no_reference, serve=serve)
        except (EvalError, ServerError, IngestError) as e:
            fail(str(e))
    for s in served:
        console.print(f"served {s['model']} with {s['engine']} (start-up {s['startup_s']} s)", highlight=False, markup=False, soft_wrap=True)
    for b, note in res.notes.items():
        console.print(f"{b}: {note}", highlight=False, markup=False)
    console.print(f"requests this run: {res.evaluated} (the rest from the cache under {out})", highlight=False, markup=False)
    print(res.markdown)
    console.print("written: " + ", ".join(res.uris.values()), highlight=False, markup=False)


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="Model directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    api_key: str = typer.Option(None, "--api-key", envvar="FINR1_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY' (also from $FINR1_SERVE_API_KEY)"),
    engine: str = typer.Option("transformers", "--engine", help="transformers (CPU) or vllm (.venv-vllm on CPU, the gpu extra on GPUs; where it cannot run, one line says so and transformers serves)"),
    log_file: str = typer.Option(None, "--log", help="The model server's log file, appended to (default: a temporary file)"),
    log_requests: bool = typer.Option(False, "--log-requests", help="vllm: log each request's rendered prompt and sampling parameters"),
) -> None:
    """Serve a model over the OpenAI API until Ctrl-C/SIGTERM (health check: GET /health)."""
    from finr1_core.serving import ServerError, serve_forever

    try:
        serve_forever(model, host, port, api_key, engine, log=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True), log_path=log_file,
                      log_requests=log_requests)
    except ServerError as e:
        fail(str(e))


@app.command("webui")
def webui_cmd(
    model: str = typer.Argument(None, help="Model directory (default: the embedded model, `finr1 prepare-model`)"),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Open WebUI's port on 127.0.0.1"),
    serve_port: int = typer.Option(0, "--serve-port", min=0, max=65535, help="`finr1 serve`'s port on 127.0.0.1 (0: a free one)"),
    api_key: str = typer.Option(None, "--api-key", envvar="FINR1_SERVE_API_KEY", help="Key between Open WebUI and `finr1 serve` (default: a random one per start)"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Reply length cap (Open WebUI's default model params)"),
    data_dir: str = typer.Option(None, "--data-dir", help="Open WebUI's data (default: $FINR1_HOME/webui)"),
    open_webui: str = typer.Option(None, "--open-webui", help="The open-webui executable (default: .venv-webui/bin/open-webui, as `make webui` installs it)"),
) -> None:
    """Open WebUI on 127.0.0.1 against `finr1 serve` of a model, until Ctrl-C/SIGTERM (single user, offline)."""
    from flows.webui import WebUIError, run_webui

    try:
        run_webui(model, port=port, serve_port=serve_port, api_key=api_key, max_tokens=max_tokens, data_dir=data_dir,
                  open_webui=open_webui, log=lambda m: print(m, flush=True))  # plain print: a URL must not wrap
    except WebUIError as e:
        fail(str(e))
# ---------------------------------------------------------------- end eval and serve
train_app = typer.Typer(help="Train SFT or GRPO from a TRL recipe as its own job (accelerate launch or Ray Train); a re-run with the same --output resumes.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train_cmd(method: str, recipe: str, data: str | None, output: str, num_processes: int | None, launcher: str, set_: list[str] | None,
               accelerate_config: str | None) -> None:
    import json

    from finr1_core.training.data import DataError
    from finr1_core.training.launch import TrainingFailed, train_cli
    from finr1_core.training.recipes import RecipeError

    try:
        res = train_cli(method, recipe, data, output, num_processes, launcher, set_ or [],
                        on_line=lambda m: console.print(m, highlight=False, markup=False, soft_wrap=True),  # one log line stays one line
                        accelerate_config=accelerate_config)
    except (RecipeError, DataError, TrainingFailed) as e:
        fail(str(e))
    keep = ("method", "steps", "train_loss", "resumed_from_step", "steps_this_attempt", "reward", "engine", "peak_memory_gib", "checkpoint", "plot",
            "tensorboard", "output_uri")
    console.print(json.dumps({k: res.get(k) for k in keep}, indent=2, default=str), highlight=False, markup=False, soft_wrap=True)


_TRAIN_OPTS = dict(
    recipe=typer.Option(..., "--recipe", help="TRL recipe YAML (configs/recipes/<model>/<method>.yaml)"),
    data=typer.Option(None, "--data", help="Released dataset folder, Parquet path or hub id (default: the recipe's dataset)"),
    output=typer.Option(..., "--output", help="Local folder or s3:// URI; re-running with the same one resumes"),
    num_processes=typer.Option(None, "--num-processes", min=1, help="Training processes (GPUs, or CPU processes over gloo); default 1, or the accelerate config's own count"),
    launcher=typer.Option("accelerate", "--launcher", help="accelerate (accelerate launch) | ray (Ray Train TorchTrainer on RAY_ADDRESS or a local Ray)"),
    accelerate_config=typer.Option(None, "--accelerate-config", help="Accelerate config file for accelerate launch, e.g. DeepSpeed ZeRO-3: infra/accelerate/zero3-single-node.yaml (the pipeline's train.<method>.accelerate_config)"),
    set_=typer.Option(None, "--set", help="Recipe field override, key=value (repeatable)"),
)


@train_app.command("sft")
def train_sft_cmd(recipe: str = _TRAIN_OPTS["recipe"], data: str = _TRAIN_OPTS["data"], output: str = _TRAIN_OPTS["output"],
                  num_processes: int = _TRAIN_OPTS["num_processes"], launcher: str = _TRAIN_OPTS["launcher"],
                  set_: list[str] = _TRAIN_OPTS["set_"], accelerate_config: str = _TRAIN_OPTS["accelerate_config"]) -> None:
    """Supervised fine-tuning from a recipe."""
    _train_cmd("sft", recipe, data, output, num_processes, launcher, set_, accelerate_config)


@train_app.command("grpo")
def train_grpo_cmd(recipe: str = _TRAIN_OPTS["recipe"], data: str = _TRAIN_OPTS["data"], output: str = _TRAIN_OPTS["output"],
                   num_processes: int = _TRAIN_OPTS["num_processes"], launcher: str = _TRAIN_OPTS["launcher"],
                   set_: list[str] = _TRAIN_OPTS["set_"], accelerate_config: str = _TRAIN_OPTS["accelerate_config"]) -> None:
    """GRPO from a recipe (rewards named in the recipe)."""
    _train_cmd("grpo", recipe, data, output, num_processes, launcher, set_, accelerate_config)


if __name__ == "__main__":  # pragma: no cover
    app()
