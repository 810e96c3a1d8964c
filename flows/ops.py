"""Operations flows: partial runs of the pipeline and the scheduled incremental re-distillation.

The deployments in ``deployments/prefect.yaml`` use these flows (and ``finr1-pipeline``):

- ``finr1-stages``: run a range of stages (``start`` .. ``stop``) of a run id, e.g. distill only,
  verify/judge/release only, SFT + GRPO only, evaluation only. Earlier stages are never redone:
  a stage whose manifest is complete is skipped by the library, and a stage whose input is
  missing fails in one line naming it.
- ``finr1-redistill``: distil into a **new** run id, then score, split and refresh the release
  (``<storage_root>/_release/latest/`` and ``latest.json``). It is incremental through the
  durable response cache (``<storage_root>/_cache/responses/``): only prompts whose request key
  (record id, rendered prompt, model, sampling, sample index) is not cached go to the teacher,
  so a new or changed source record or prompt is paid for, and nothing else.

Helpers shared with ``flows/pipeline.py``:

- :func:`default_run_id`: a run id derived from the flow run (its creation time and id), so
  ``prefect flow-run retry`` and the UI's Retry resume the *same* run id;
- :func:`bound_stages`: the tasks of ``tasks/stages.py`` with their results persisted under the
  storage root: ``<storage_root>/_prefect-results`` (a saved ``RemoteFileSystem`` block when the
  root is ``s3://``, a saved ``LocalFileSystem`` block otherwise).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.states import Failed

from finr1_core import pipeline
from finr1_core.storage import join
from tasks import stages as stage_tasks

Stage = Literal["ingest", "prompts", "distill", "score", "split", "sft", "grpo", "eval", "report"]
Model = Literal["base", "sft", "grpo"]
ORDER: list[str] = ["ingest", "prompts", "distill", "score", "split", "sft", "grpo", "eval", "report"]
RESULTS_DIR = "_prefect-results"
RELEASE_DIR = "_release"


# --------------------------------------------------------------------------- helpers
def default_run_id() -> str:
    """A run id for this flow run when none was given: ``YYYYmmdd-HHMMSS-<flow run id[:6]>``.

    It depends only on the flow run (creation time and id), so a retry of the same flow run
    (``prefect flow-run retry``, the UI's Retry) works on the same storage and reuses every
    committed shard and persisted task result. Outside a flow run: a fresh id."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    fr = ctx.flow_run if ctx else None
    if fr is None:
        return pipeline.new_run_id()
    created = fr.created or fr.expected_start_time or datetime.now(timezone.utc)
    return created.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S-") + fr.id.hex[:6]


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith(("file://", "local://"))


def result_storage_for(storage_root: str):
    """The saved block that persists task results under ``<storage_root>/_prefect-results``.

    ``s3://`` (or any remote fsspec URI): a ``RemoteFileSystem`` block. Credentials are never
    stored in it: s3fs reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from the worker's
    environment; a non-default endpoint (MinIO, moto) comes from ``AWS_ENDPOINT_URL``. Local
    roots: a ``LocalFileSystem`` block on the absolute path. The block is named after a hash of
    its base path (``finr1-results-<hash>``) and saved (idempotently), so a result can be read
    back from the API by any process with the same credentials."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    if _is_remote(storage_root):
        base = join(storage_root, RESULTS_DIR)
        settings = {}
        if storage_root.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
            settings = {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
        block = RemoteFileSystem(basepath=base, settings=settings)
    else:
        local = storage_root[len("file://"):] if storage_root.startswith("file://") else storage_root
        base = str((Path(local).expanduser() / RESULTS_DIR).resolve())
        block = LocalFileSystem(basepath=base)
    name = "finr1-results-" + hashlib.sha256(base.encode()).hexdigest()[:10]
    block.save(name, overwrite=True)
    return block


_TASKS = ("ingest", "prompts", "distill_shard", "score_shard", "finish_stage", "split_release", "train_sft", "train_grpo", "evaluate", "report", "stage_summary")


def bound_stages(storage_root: str) -> SimpleNamespace:
    """The tasks of ``tasks/stages.py`` with ``result_storage`` under the storage root (same
    names, same cache policy: a cache hit of an earlier flow run is found there)."""
    rs = result_storage_for(storage_root)
    return SimpleNamespace(**{n: getattr(stage_tasks, n).with_options(result_storage=rs) for n in _TASKS if hasattr(stage_tasks, n)})


def _shards(task, cfg: dict, shards: list[str], base_url: str | None) -> tuple[dict[str, dict], dict[str, str]]:
    """Submit one task per shard; wait for all. (results of completed shards, reasons of failed)."""
    futures = {s: task.submit(cfg, s, base_url) for s in shards}
    ok, failed = {}, {}
    for s, f in futures.items():
        f.wait()
        try:
            ok[s] = f.result(raise_on_failure=True)
        except Exception as e:  # the reason of the shard's last attempt
            failed[s] = f"{type(e).__name__}: {e}"[:500]
    return ok, failed


def _failed_artifact(c, failed: dict[str, str], total: int) -> str:
    retry = f"finr1 retry-failed {c.run_id}" + ("" if c.storage_root == "runs" else f" --storage {c.storage_root}")
    md = "## Failed shards\n\n| shard | reason |\n|---|---|\n" + "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in failed.items())
    md += f"\n\nCompleted shards are kept. Retry only these: `prefect flow-run retry <flow-run-id>` (or the UI's Retry), or `{retry}`."
    create_markdown_artifact(key="failed-shards", markdown=md, description="Shards that failed in this run")
    return f"{len(failed)} of {total} shard(s) failed; completed shards are kept. Retry: {retry}, or retry the flow run."


def run_range(c, cfg: dict, t: SimpleNamespace, start: str, stop: str, shards: list[str] | None = None,
              models: list[str] | None = None) -> dict:
    """Run stages ``start``..``stop`` (inclusive) of run ``c.run_id``. Returns a summary dict, or
    a ``Failed`` state when shards failed (the failed-shards artifact says which)."""
    from flows.pipeline import model_server

    log = get_run_logger()
    rng = ORDER[ORDER.index(start): ORDER.index(stop) + 1]
    if not rng:
        raise ValueError(f"empty stage range: start {start!r} comes after stop {stop!r}")
    store = pipeline.store_for(c)
    out: dict = {"run_id": c.run_id, "stages": rng, "storage": store.base}
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.time()
        r = fn(*a)
        timings[name] = timings.get(name, 0.0) + time.time() - t0
        return r

    if "ingest" in rng:
        timed("ingest", t.ingest, cfg)
    if "prompts" in rng:
        all_shards = timed("prompts", t.prompts, cfg)["shards"]
    else:
        m = store.stage_manifest("prompts")
        all_shards = [e["shard"] for e in (m or {}).get("shards", [])]
        if not all_shards and any(s in rng for s in ("distill", "score")):
            raise RuntimeError(f"run {c.run_id}: the prompts stage is not complete under {store.base}; run it first (start=ingest)")
    todo = [s for s in all_shards if shards is None or s in set(shards)]
    unknown = sorted(set(shards or []) - set(all_shards))
    if unknown:
        raise ValueError(f"unknown shard(s) {unknown}; run {c.run_id} has {all_shards}")
    partial = len(todo) != len(all_shards)
    if partial and any(s in rng for s in ORDER[ORDER.index("split"):]):
        raise ValueError("a shard subset can only run distill/score; run the later stages on every shard")
    needs_server = any(s in rng for s in ("distill", "score", "eval"))
    with model_server(c) if needs_server else contextlib.nullcontext() as base_url:
        failed: dict[str, str] = {}
        if "distill" in rng:
            res, failed = timed("distill", _shards, t.distill_shard, cfg, todo, base_url)
            out["distill"] = _sum(res.values())
            ok = [s for s in todo if s in res]
        else:
            ok = todo
        if "score" in rng:
            _, score_failed = timed("score", _shards, t.score_shard, cfg, ok, base_url)
            failed.update({f"score:{k}": v for k, v in score_failed.items()})
        if failed:
            msg = _failed_artifact(c, failed, len(todo))
            log.error("%d shard(s) failed: %s", len(failed), failed)
            return Failed(message=msg)
        if not partial and "distill" in rng:
            t.finish_stage(cfg, "distill", all_shards, pipeline.distill_hash(c))
        if not partial and "score" in rng:
            t.finish_stage(cfg, "scored", all_shards, pipeline.score_hash(c))
        if "split" in rng:
            out["split"] = timed("split", t.split_release, cfg)
        if "sft" in rng:
            out["sft"] = timed("sft", t.train_sft, cfg)
        if "grpo" in rng:
            out["grpo"] = timed("grpo", t.train_grpo, cfg)
        if "eval" in rng:
            out["eval"] = {m: timed("eval", t.evaluate, cfg, m, base_url) for m in (models or ["base", "sft", "grpo"])}
    if "split" not in rng and any(s in rng for s in ("ingest", "prompts", "distill", "score")):  # split publishes its own
        t.stage_summary(cfg)
    if "report" in rng:
        out["report"] = t.report(cfg, timings)["report"]
    out["timings"] = timings
    return out


def _sum(results) -> dict:
    keys = ("requests", "cached", "requested", "completed", "rows", "prompt_tokens", "completion_tokens", "paid_prompt_tokens", "paid_completion_tokens")
    tot = {k: sum(int(r.get(k) or 0) for r in results) for k in keys}
    tot["cost_usd"] = round(sum(float(r.get("cost_usd") or 0) for r in results), 6)
    tot["paid_cost_usd"] = round(sum(float(r.get("paid_cost_usd") or 0) for r in results), 6)
    return tot


# --------------------------------------------------------------------------- flows
@flow(name="finr1-stages", log_prints=False)
def finr1_stages(
    run_id: str | None = None,
    start: Stage = "ingest",
    stop: Stage = "distill",
    config: str = "configs/embedded.yaml",
    storage_root: str | None = None,
    limit: int | None = None,
    shards: list[str] | None = None,
    models: list[Model] | None = None,
):
    """Run a range of pipeline stages of one run id (distill only, verify/judge/release only, training only, evaluation only).

    Args:
        run_id: The run to work on. Required when start is after prompts (the stages before must be complete); empty = a new run id (only sensible when start is ingest).
        start: First stage to run (ingest, prompts, distill, score, split, sft, grpo, eval, report).
        stop: Last stage to run, inclusive.
        config: Path of the pipeline config (configs/embedded.yaml or configs/production.yaml), relative to the repository root.
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's.
        limit: Cap rows per source (must match the run's original limit, or ingest/prompts are redone).
        shards: Only these shards (e.g. ["shard-00002"]), for distill/score; empty = every shard.
        models: Models to evaluate (base, sft, grpo); empty = all three.
    """
    if ORDER.index(start) > ORDER.index("prompts") and not run_id:
        raise ValueError(f"start={start} works on an existing run: give its run_id")
    c = pipeline.load(config, run_id=run_id or default_run_id(), storage_root=storage_root, limit=limit)
    get_run_logger().info("run %s, stages %s..%s, storage %s", c.run_id, start, stop, c.storage_root)
    return run_range(c, c.public_dict(), bound_stages(c.storage_root), start, stop, shards, models)


@task(name="refresh-release", persist_result=False)
def refresh_release(cfg: dict, distill: dict) -> dict:
    """Copy the run's release to ``<storage_root>/_release/latest/`` and point
    ``<storage_root>/_release/latest.json`` at the run (written last: readers see the old or the
    new release, never a mix of pointer and files)."""
    c = stage_tasks._cfg(cfg)
    store = pipeline.store_for(c)
    src = store.uri("release")
    if not store.exists(src):
        raise RuntimeError(f"run {c.run_id} has no release at {src}")
    latest = join(c.storage_root, RELEASE_DIR, "latest")
    fs = store.fs
    if fs.exists(store._p(latest)):
        fs.rm(store._p(latest), recursive=True)
    files = [p for p in fs.find(store._p(src))]
    local = "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))
    for p in files:
        rel = p[len(store._p(src)):].lstrip("/")
        dst = store._p(join(latest, rel))
        if local:
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(dst, fs.cat_file(p))
    pointer = {
        "run_id": c.run_id,
        "release": src,
        "latest": latest,
        "files": len(files),
        "refreshed_at": datetime.now(timezone.utc).isoformat(),
        "distill": distill,
    }
    store.write_json(join(c.storage_root, RELEASE_DIR, "latest.json"), pointer)
    create_link_artifact(key="release-latest", link=latest, description=f"latest release (run {c.run_id})")
    return pointer


@flow(name="finr1-redistill", log_prints=False)
def finr1_redistill(
    config: str = "configs/embedded.yaml",
    storage_root: str | None = None,
    limit: int | None = None,
    run_id: str | None = None,
    refresh: bool = True,
):
    """Incremental re-distillation: a new run id distils only what the response cache lacks, then scores, splits and refreshes the release.

    Args:
        config: Path of the pipeline config (configs/embedded.yaml or configs/production.yaml), relative to the repository root.
        storage_root: Override the storage root (a local path or s3://bucket/prefix); empty = the config's. The response cache under it is what makes this incremental.
        limit: Cap rows per source.
        run_id: The new run id; empty = redistill-<date>-<flow run id>.
        refresh: Refresh <storage_root>/_release/latest from this run when it completes.
    """
    log = get_run_logger()
    c = pipeline.load(config, run_id=run_id or ("redistill-" + default_run_id()), storage_root=storage_root, limit=limit)
    cfg = c.public_dict()
    t = bound_stages(c.storage_root)
    log.info("re-distill into run %s, storage %s", c.run_id, c.storage_root)
    out = run_range(c, cfg, t, "ingest", "split")
    if not isinstance(out, dict):
        return out  # Failed (failed-shards artifact published)
    d = out.get("distill", {})
    rows = [
        {"measure": "prompts x samples (request keys)", "value": d.get("requests", 0)},
        {"measure": "found in the response cache (not sent)", "value": d.get("cached", 0)},
        {"measure": "sent to the teacher (new or changed)", "value": d.get("requested", 0)},
        {"measure": "paid tokens (prompt + completion)", "value": d.get("paid_prompt_tokens", 0) + d.get("paid_completion_tokens", 0)},
        {"measure": "paid cost (USD)", "value": d.get("paid_cost_usd", 0.0)},
    ]
    create_table_artifact(key="re-distill", table=rows, description=f"incremental re-distill into run {c.run_id}")
    log.info("re-distill: %s of %s requests sent to the teacher, %s from the cache", d.get("requested"), d.get("requests"), d.get("cached"))
    if refresh:
        out["release_latest"] = refresh_release(cfg, d)
    return out


# --------------------------------------------------------------------------- local operations
# `make server` / `finr1 server up|down`: a real `prefect server start` (SQLite in PREFECT_HOME by
# default, Postgres when PREFECT_API_DATABASE_CONNECTION_URL is set), the `finr1-process` work
# pool, the `teacher` tag concurrency limit, a `prefect worker start` and the deployments of
# deployments/prefect.yaml. PIDs go to <state dir>/server.json; `down` stops them by PID.
POOL = "finr1-process"
PREFECT_FILE = "deployments/prefect.yaml"


def state_dir(home: str | None = None) -> Path:
    from finr1_core.config import finr1_home

    return Path(home).expanduser().resolve() if home else finr1_home() / "prefect"


def _alive(pid: int | None) -> bool:
    """True when ``pid`` runs and is one of ours (a prefect process), not a recycled PID."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "prefect" in cmd


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _healthy(api_url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(api_url + "/health", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def server_up(host: str = "127.0.0.1", port: int = 4200, home: str | None = None, teacher_limit: int = 1,
              redistill_cron: str | None = None, deploy: bool = True, log=print) -> dict:
    """Start (or reuse) the server and the worker, then create the pool, the limit and the
    deployments. Returns the state written to ``server.json``."""
    import subprocess
    import sys

    from finr1_core.config import REPO_ROOT

    sd = state_dir(home)
    (sd / "logs").mkdir(parents=True, exist_ok=True)
    state_file = sd / "server.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    api = f"http://{host}:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(sd), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"), RAY_USAGE_STATS_ENABLED="0")
    env.pop("PREFECT_PROFILE", None)
    exe = str(Path(sys.executable).with_name("prefect"))

    def prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([exe, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        if check and p.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
        return p

    if _alive(state.get("server_pid")) and state.get("api_url") == api:
        log(f"server already running (pid {state['server_pid']}) at {api}")
    else:
        if not _port_free(host, port):
            raise RuntimeError(f"{host}:{port} is in use by another process; pick another --port")
        t0 = time.time()
        out = open(sd / "logs" / "server.log", "ab")
        p = subprocess.Popen([exe, "server", "start", "--host", host, "--port", str(port)], env=env, cwd=REPO_ROOT,
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state = {"server_pid": p.pid, "api_url": api, "ui_url": f"http://{host}:{port}", "prefect_home": str(sd)}
        state_file.write_text(json.dumps(state, indent=2))
        while not _healthy(api):
            if p.poll() is not None:
                raise RuntimeError(f"prefect server exited ({p.returncode}); see {sd / 'logs' / 'server.log'}")
            if time.time() - t0 > 120:
                raise RuntimeError(f"prefect server not healthy after 120 s; see {sd / 'logs' / 'server.log'}")
            time.sleep(0.3)
        log(f"server up at {api} (pid {p.pid}, {time.time() - t0:.1f} s; database: "
            f"{'postgres' if os.environ.get('PREFECT_API_DATABASE_CONNECTION_URL') else 'sqlite in ' + str(sd)})")
    # the pool and the limit at once (each CLI call pays Prefect's import time)
    calls = [["work-pool", "create", POOL, "--type", "process", "--overwrite"], ["concurrency-limit", "create", "teacher", str(teacher_limit)]]
    procs = [subprocess.Popen([exe, *a], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a in calls]
    for a, p in zip(calls, procs):
        out_text = p.communicate(timeout=300)[0]
        if p.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(a)} failed ({p.returncode}): {out_text[-1500:]}")
    log(f"work pool {POOL}; tag concurrency limit teacher={teacher_limit}")
    if _alive(state.get("worker_pid")):
        log(f"worker already running (pid {state['worker_pid']})")
    else:
        out = open(sd / "logs" / "worker.log", "ab")
        w = subprocess.Popen([exe, "worker", "start", "--pool", POOL, "--type", "process"], env=env, cwd=REPO_ROOT,
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state["worker_pid"] = w.pid
        state_file.write_text(json.dumps(state, indent=2))
        log(f"worker started (pid {w.pid}, log {sd / 'logs' / 'worker.log'})")
    if deploy:
        t0 = time.time()
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", PREFECT_FILE)
        if redistill_cron:
            prefect("deployment", "schedule", "create", "finr1-redistill/re-distill", "--cron", redistill_cron,
                    "--timezone", "UTC", "--replace", "-y")
        log(f"deployed {PREFECT_FILE} ({time.time() - t0:.1f} s)" + (f"; re-distill cron {redistill_cron!r}" if redistill_cron else ""))
    state["deployed"] = bool(deploy)
    state_file.write_text(json.dumps(state, indent=2))
    return state


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def server_down(home: str | None = None, log=print, timeout_s: float = 15.0) -> list[int]:
    """Stop the worker, then the server, by the PIDs in ``server.json``. Each was started as the
    leader of its own process group, so its children (flow runs and what they started, uvicorn)
    get the same signal: SIGTERM, then SIGKILL for what is still there after ``timeout_s``."""
    import signal

    sd = state_dir(home)
    state_file = sd / "server.json"
    if not state_file.exists():
        log(f"nothing to stop: no {state_file}")
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for name in ("worker_pid", "server_pid"):
        pid = state.get(name)
        if not pid or not (_alive(pid) or _group(pid)):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        t0 = time.time()
        while _group(pid) and time.time() - t0 < timeout_s:
            time.sleep(0.1)
        if _group(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            t1 = time.time()
            while _group(pid) and time.time() - t1 < 5:
                time.sleep(0.1)
        stopped.append(pid)
        log(f"stopped {name[:-4]} (pid {pid}, {time.time() - t0:.1f} s)")
    state_file.unlink()
    return stopped
