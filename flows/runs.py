"""What every finr1 flow does first: name the run, persist task results under the storage root,
and (for stages that talk to the embedded model) own the managed model server."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from prefect import get_run_logger
from prefect.context import FlowRunContext

from finr1_core import stages
from finr1_core.config import PipelineConfig
from finr1_core.lease import RunLease
from finr1_core.serving import ManagedServer, ServerError, VLLMServer, serving_note, vllm_kwargs
from finr1_core.storage import join

RESULTS_DIR = "_prefect-results"


def default_run_id() -> str:
    """A run id for this flow run when none was given: ``YYYYmmdd-HHMMSS-<flow run id[:6]>``.

    It depends only on the flow run (creation time and id), so a retry of the same flow run
    (``prefect flow-run retry``, the UI's Retry) works on the same storage and reuses every
    committed shard and persisted task result. Outside a flow run: a fresh id."""
    ctx = FlowRunContext.get()
    fr = ctx.flow_run if ctx else None
    if fr is None:
        return stages.new_run_id()
    created = fr.created or fr.expected_start_time or datetime.now(timezone.utc)
    return created.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S-") + fr.id.hex[:6]


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith(("file://", "local://"))


@lru_cache(maxsize=16)
def result_storage_for(storage_root: str):
    """The saved block that persists task results under ``<storage_root>/_prefect-results``.

    ``s3://`` (or any remote fsspec URI): a ``RemoteFileSystem`` block. Credentials are never
    stored in it: s3fs reads them from the worker's environment, and a non-default endpoint
    (MinIO, moto) from ``AWS_ENDPOINT_URL``. Local roots: a ``LocalFileSystem`` block on the
    absolute path. The block is named after a hash of its base path and saved idempotently, so
    any process with the same credentials can read a result back."""
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
    block.save("finr1-results-" + hashlib.sha256(base.encode()).hexdigest()[:10], overwrite=True)
    return block


_HELD: dict[tuple[str, str], RunLease] = {}  # leases this process holds, for nested phase flows


@contextlib.contextmanager
def open_run(config: str, run_id: str | None, storage_root: str | None = None, limit: int | None = None,
             wait: bool = False) -> Iterator[dict]:
    """Load and validate the config of run ``run_id`` (a new id when empty), take the run's lease,
    persist this flow's task results under its storage root, and yield the config as the dict
    tasks take.

    One owner per run id: the lease (``finr1_core.lease.RunLease``, a lease object in the storage
    root with a heartbeat) is taken before any work and released at the end; a second run on a
    held id fails at once in one line naming the holder (``wait=True`` waits instead). Phase flows
    called from the pipeline run in the same process and share its lease.

    Every task and subflow started inside inherits the result storage from this flow run's result
    store, so results land under ``<storage_root>/_prefect-results``."""
    c = stages.load(config, run_id=run_id or default_run_id(), storage_root=storage_root, limit=limit)
    ctx = FlowRunContext.get()
    if ctx is not None:
        ctx.result_store = ctx.result_store.model_copy(update={"result_storage": result_storage_for(c.storage_root)})
    log = get_run_logger()
    log.info("run %s, storage %s, profile %s", c.run_id, c.storage_root, c.profile)
    key = (c.storage_root, c.run_id)
    if key in _HELD:
        _HELD[key].ensure()
        yield c.public_dict()
        return
    owner = f"flow run {ctx.flow_run.id}" if ctx is not None and ctx.flow_run else None
    with RunLease(c.storage_root, c.run_id, owner=owner, wait=wait, log=log.info) as lease:
        _HELD[key] = lease
        try:
            yield c.public_dict()
        finally:
            _HELD.pop(key, None)


def release_held_leases(timeout_s: float = 3.0) -> list[str]:
    """Release every run lease this process holds (a stopped run: a re-run may start at once);
    returns their run ids. Never waits more than ``timeout_s`` per lease."""
    import threading

    out = []
    for (_, run_id), lease in list(_HELD.items()):
        t = threading.Thread(target=lease.release, daemon=True)
        t.start()
        t.join(timeout_s)
        out.append(run_id)
    return out


def require_run_id(run_id: str | None, phase: str) -> str:
    if not run_id:
        raise ValueError(f"the {phase} phase works on an existing run: give its run_id")
    return run_id


@contextlib.contextmanager
def model_server(cfg: dict | PipelineConfig, base_url: str | dict | None = None) -> Iterator[str | dict | None]:
    """The managed model servers of the embedded profile, as ``{"engine", "urls": {model: url}}``:
    ``base_url`` when the caller already owns them, else servers started here and stopped on exit,
    failure or Ctrl-C; ``None`` for external endpoints (production vLLM).

    ``serve.engine: vllm`` starts one vLLM server per model that a role without its own endpoint
    names (teacher and judge share one when they are the same model). Where vLLM is not installed
    or a server does not start, one warning line says why, and one ``transformers serve`` serves
    every model instead. What served is written to ``<run>/serving.json`` for the run report."""
    c = cfg if isinstance(cfg, PipelineConfig) else PipelineConfig.model_validate(cfg)
    if base_url or c.serve.kind != "managed":
        yield base_url
        return
    log = get_run_logger()
    s = c.serve
    models = list(dict.fromkeys(r.model for r in (c.teacher, c.judge) if any(not e.base_url for e in r.endpoints)))
    if not models:  # every role has its own endpoint: nothing to serve
        yield None
        return
    servers: list[ManagedServer] = []
    served: dict = {"engine": s.engine, "urls": {}, "servers": []}
    try:
        if s.engine == "vllm":
            for m in models:
                t0 = time.time()
                try:
                    srv = VLLMServer(m, s.host, s.port if len(models) == 1 else 0, served_model_name=m, **vllm_kwargs(s)).start()
                except ServerError as e:
                    log.warning(serving_note("vllm", str(e).removeprefix("vLLM unavailable: ")))
                    for x in servers:
                        x.stop()
                    servers, served = [], {"engine": "transformers", "urls": {}, "servers": [], "fallback_reason": str(e)}
                    break
                servers.append(srv)
                served["urls"][m] = srv.base_url
                served["servers"].append({"engine": "vllm", "model": m, "url": srv.base_url, "startup_s": round(time.time() - t0, 1), "log": srv.log_path})
                log.info("vLLM server of %s up at %s (pid %s, %.1f s, log %s)", m, srv.base_url, srv.pid, time.time() - t0, srv.log_path)
        if not servers:
            t0 = time.time()
            srv = ManagedServer(host=s.host, port=s.port, continuous_batching=s.continuous_batching, startup_timeout_s=s.startup_timeout_s,
                                cb_num_blocks=s.cb_num_blocks, cb_block_size=s.cb_block_size).start()
            servers.append(srv)
            served["engine"] = "transformers"
            served["urls"] = {m: srv.base_url for m in models}
            served["servers"] = [{"engine": "transformers", "model": ", ".join(models), "url": srv.base_url, "startup_s": round(time.time() - t0, 1), "log": srv.log_path}]
            log.info("model server up at %s (pid %s, %.1f s, log %s)", srv.base_url, srv.pid, time.time() - t0, srv.log_path)
        _record_serving(c, served)
        yield {"engine": served["engine"], "urls": served["urls"]}
    finally:
        for x in servers:
            x.stop()
        log.info("model server%s stopped", "s" if len(servers) > 1 else "")


def _record_serving(c: PipelineConfig, served: dict) -> None:
    """``<run>/serving.json``: what served the teacher and the judges (the run report shows it)."""
    import json

    try:
        store = stages.store_for(c)
        store.write_bytes_atomic(store.uri("serving.json"), json.dumps(served, indent=1).encode())
    except Exception as e:  # a report detail: never fail the run for it
        get_run_logger().warning("serving.json not written: %s", e)


def start_ray(cfg: dict) -> None:
    """Start (or join) Ray from the flow's own thread, before any task does.

    A local Ray's GCS and raylet are started with ``PR_SET_PDEATHSIG``: they are killed when the
    *thread* that started them exits. Started from a task (a worker thread of a subflow's task
    runner), they died when that subflow finished, and the driver aborted 60 s later. The flow's
    thread outlives every phase."""
    from finr1_core.distill import ray_init

    c = PipelineConfig.model_validate(cfg)
    ray_init(c.distill.ray_address, c.distill.ray_num_cpus)
