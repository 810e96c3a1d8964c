"""Operating finr1 with real Prefect: server, process worker, deployments, shell triggers, the
scheduler, failed-shard retries and incremental re-distillation.

Everything is real and torn down by PID:
- moto's S3 server (``moto_server`` subprocess) holds the storage root, the response cache and
  Prefect's persisted results (a saved ``RemoteFileSystem`` block);
- ``finr1 server up`` runs ``prefect server start --background`` (temporary PREFECT_HOME, a free
  port) on PostgreSQL (a fresh database per session on 127.0.0.1:5432), the ``finr1-process``
  pool, the ``teacher`` tag concurrency limit and a process worker, and deploys
  ``deployments/prefect.yaml``; ``finr1 server down`` stops the worker by PID and the server with
  ``prefect server stop``;
- two fault-injecting OpenAI-compatible servers (``tests/fake_openai.py`` subprocesses) act as
  teacher and judge, and record every request they receive, so the tests count what was paid for.

No model training: runs stop after ``score`` (or ``split`` for re-distill).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from finr1_core.config import REPO_ROOT
from finr1_core.storage import Store
from tests.fake_openai import FakeOpenAIProcess
from tests.pg import fresh_database, psql

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
BUCKET = "finr1-ops"
ROOT = f"s3://{BUCKET}/runs"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(1.0)


def _kill_pid(pid: int) -> None:
    import psutil

    try:
        p = psutil.Process(pid)
        p.terminate()
        p.wait(10)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        p.kill()


class Ops:
    """The running stack: API helpers and CLI helpers."""

    def __init__(self, env: dict, api: str, home: Path, cfg_path: Path, teacher: FakeOpenAIProcess, judge: FakeOpenAIProcess, s3: dict):
        self.env, self.api, self.home, self.cfg_path = env, api, home, cfg_path
        self.teacher, self.judge, self.s3 = teacher, judge, s3
        self.http = httpx.Client(base_url=api, timeout=30)

    def cli(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)

    def run_deployment(self, name: str, **params) -> str:
        args = ["prefect", "deployment", "run", name]
        for k, v in params.items():
            args += ["--param", f"{k}={v}"]
        p = self.cli(*args)
        assert p.returncode == 0, p.stdout + p.stderr
        return re.search(r"UUID: ([0-9a-f-]{36})", p.stdout).group(1)

    def wait(self, flow_run_id: str, timeout: float = 240) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            fr = self.http.get(f"/flow_runs/{flow_run_id}").json()
            if fr["state_type"] in TERMINAL and not (fr["state_name"] == "AwaitingRetry"):
                return fr
            time.sleep(1.0)
        raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout}s: {fr['state_name']}; worker log:\n{self.worker_log()}")

    def worker_log(self, n: int = 6000) -> str:
        p = self.home / "logs" / "worker.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def post(self, path: str, body: dict) -> list | dict:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def run_tree(self, flow_run_id: str) -> list[str]:
        """The flow run and every subflow run under it (the pipeline's phases run as subflows)."""
        ids, frontier = [flow_run_id], [flow_run_id]
        while frontier:
            trs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": frontier}}, "limit": 200})
            subs = self.post("/flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"any_": [t["id"] for t in trs]}}, "limit": 200}) if trs else []
            frontier = [f["id"] for f in subs]
            ids += frontier
        return ids

    def artifacts(self, flow_run_id: str) -> dict[str, dict]:
        arts = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": self.run_tree(flow_run_id)}}, "sort": "CREATED_DESC", "limit": 200})
        out: dict[str, dict] = {}
        for a in arts:  # newest first: keep the latest version of each key
            if a.get("key"):
                out.setdefault(a["key"], a)
        return out

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": self.run_tree(flow_run_id)}}, "limit": 200})

    def teacher_keys(self) -> list[str]:
        return [r["key"] for r in self.teacher.requests() if r.get("key")]

    def store(self, run_id: str) -> Store:
        return Store(ROOT, run_id, storage_options=self.s3)

    def flow_log(self, flow_run_id: str) -> str:
        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return "\n".join(l["message"] for l in logs)[-6000:]


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this session's Prefect server, dropped at the end."""
    with fresh_database("finr1_ops") as db:
        yield db


@pytest.fixture(scope="module")
def ops(tmp_path_factory, pg_database):
    tmp = tmp_path_factory.mktemp("ops")
    pids: list[int] = []
    moto_port = _free_port()
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    pids.append(moto.pid)
    teacher = judge = None
    state: dict = {}
    home = tmp / "prefect"
    try:
        _wait_port(moto_port)
        s3 = {"endpoint_url": f"http://127.0.0.1:{moto_port}", "key": "testing", "secret": "testing"}
        import s3fs

        s3fs.S3FileSystem(**s3).mkdir(BUCKET)  # no region_name (docs/ARCHITECTURE.md, "Storage")
        teacher, judge = FakeOpenAIProcess(seed=1), FakeOpenAIProcess(seed=2)
        cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
        fast = dict(max_retries=1, backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=20)
        cfg.update(
            storage_root=ROOT,
            limit=8,
            # one train source, so a larger limit only appends shards (the first shards keep their prompts)
            data={"eval_holdout": 0, "sources": [{"name": "finqa", "path": "${REPO}/data/samples/finqa"},
                                                 {"name": "fineval", "path": "${REPO}/data/samples/fineval", "role": "eval"}]},
            serve={"kind": "external"},
            distill={"shard_size": 4, "num_workers": 1, "ray_num_cpus": 1},
        )
        cfg["teacher"].update(model="fake-teacher", mode="chat-prefill", endpoints=[{"name": "fake-teacher", "base_url": teacher.url}],
                              price_per_m_input=0.55, price_per_m_output=2.19, **fast)
        cfg["judge"].update(model="fake-judge", mode="chat", endpoints=[{"name": "fake-judge", "base_url": judge.url}], **fast)
        cfg_path = tmp / "ops.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))

        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_WORKER_QUERY_SECONDS="1",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", AWS_ENDPOINT_URL=s3["endpoint_url"], AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   PREFECT_API_DATABASE_CONNECTION_URL=pg_database[0])
        o = Ops(env, f"http://127.0.0.1:{port}/api", home, cfg_path, teacher, judge, s3)
        t0 = time.time()
        up = o.cli("finr1", "server", "up", "--port", str(port), "--home", str(home), "--teacher-limit", "2", timeout=300)
        o.up, o.up_seconds = up, time.time() - t0
        if (home / "worker.json").exists():
            state["worker_pid"] = json.loads((home / "worker.json").read_text())["pid"]
        if (home / "server.pid").exists():
            state["server_pid"] = int((home / "server.pid").read_text())
        o.db = pg_database[1]
        assert up.returncode == 0, up.stdout + up.stderr
        o.state = state
        yield o
    finally:
        if (home / "server.pid").exists() or (home / "worker.json").exists():
            subprocess.run([str(BIN / "finr1"), "server", "down", "--home", str(home)], capture_output=True, timeout=120)
        for f in (teacher, judge):
            if f is not None:
                f.close()
        for pid in reversed(pids):  # anything still alive (server down failed): by PID, its own group
            _kill_group(pid) if _group_alive(pid) else None
        if state.get("worker_pid") and _group_alive(state["worker_pid"]):
            _kill_group(state["worker_pid"])
        if state.get("server_pid"):
            _kill_pid(state["server_pid"])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


# ------------------------------------------------------------------------------------------ tests
def test_server_up_pool_limit_and_deployments(ops):
    assert "server up at" in ops.up.stdout and "deployed deployments/prefect.yaml" in ops.up.stdout, ops.up.stdout
    for k in ("server_pid", "worker_pid"):
        assert _alive(ops.state[k])
    assert ops.http.get("/health").json() is True
    assert "database: postgres" in ops.up.stdout  # the server runs on PostgreSQL, in this session's database
    assert psql(ops.db, "select name, type from work_pool where name = 'finr1-process'") == "finr1-process|process"
    pool = ops.http.get("/work_pools/finr1-process").json()
    assert pool["type"] == "process"
    limit = ops.http.get("/concurrency_limits/tag/teacher").json()
    assert limit["concurrency_limit"] == 2
    flows = {f["id"]: f["name"] for f in ops.post("/flows/filter", {})}
    deps = {f"{flows[d['flow_id']]}/{d['name']}": d for d in ops.post("/deployments/filter", {})}
    assert set(deps) == {
        "finr1-pipeline/embedded", "finr1-pipeline/production", "finr1-pipeline/distill", "finr1-pipeline/verify-judge-release",
        "finr1-distill-score/shards", "finr1-train/train", "finr1-evaluate/evaluate", "finr1-redistill/re-distill", "finr1-eval/models",
    }
    assert deps["finr1-pipeline/production"]["parameters"]["config"] == "configs/production.yaml"
    assert deps["finr1-train/train"]["parameters"] == {"config": "configs/embedded.yaml"}
    # the UI's run form: every parameter has a type and a description
    for name, d in deps.items():
        props = d["parameter_openapi_schema"]["properties"]
        for p, spec in props.items():
            assert spec.get("description"), f"{name}: parameter {p} has no description"
            assert spec.get("type") or spec.get("anyOf") or spec.get("enum"), f"{name}: parameter {p} has no type"
    stop_after = deps["finr1-pipeline/embedded"]["parameter_openapi_schema"]["properties"]["stop_after"]
    assert {"score", "split", "eval"} <= set(stop_after["anyOf"][0]["enum"])
    assert deps["finr1-pipeline/distill"]["work_pool_name"] == "finr1-process"


def test_scheduler_creates_redistill_runs(ops):
    dep = ops.http.get("/deployments/name/finr1-redistill/re-distill").json()
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * 1"]
    t0, runs = time.time(), []
    while time.time() - t0 < 60 and not runs:
        runs = ops.post("/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        time.sleep(1)
    assert runs, "the scheduler created no scheduled runs for re-distill"
    from datetime import datetime, timezone

    for r in runs:
        t = datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")).astimezone(timezone.utc)
        assert (t.weekday(), t.hour, t.minute) == (0, 3, 0) and t > datetime.now(timezone.utc)
        assert r["parameters"]["config"] == "configs/embedded.yaml"


def test_shell_trigger_runs_to_completed_with_artifacts_and_results(ops):
    fr_id = ops.run_deployment("finr1-pipeline/embedded", config=ops.cfg_path, limit=8, run_id="ops-1", stop_after="score")
    fr = ops.wait(fr_id)
    assert fr["state_type"] == "COMPLETED", ops.flow_log(fr_id) + ops.worker_log()
    store = ops.store("ops-1")
    assert store.stage_manifest("distill")["rows"] == 8 and store.stage_manifest("scored")["rows"] == 8
    keys = sorted(r["key"] for r in store.read_rows("distill"))
    assert sorted(ops.teacher_keys()) == keys  # each request sent exactly once

    arts = ops.artifacts(fr_id)
    assert {"ingest-distribution", "stage-summary", "parquet-paths", "distill-shard-00000", "distill-shard-00001"} <= set(arts), sorted(arts)
    assert "| finqa | 8 |" in arts["ingest-distribution"]["data"]
    assert arts["distill-shard-00001"]["type"] == "progress" and float(arts["distill-shard-00001"]["data"]) == 100.0
    table = {r["stage"]: r for r in json.loads(arts["stage-summary"]["data"])}
    d = table["distill"]
    assert (d["rows in"], d["rows out"]) == (8, 8) and d["prompt tokens"] > 0 and d["completion tokens"] > 0 and d["cost (USD)"] > 0
    assert table["score: round 1 (answer)"]["rows in"] == 8 and 0 <= table["score: round 1 (answer)"]["pass rate"] <= 1
    assert f"{ROOT}/ops-1/distill/shard-00000.parquet" in arts["parquet-paths"]["data"]

    # task results are configured to go to the storage root through a saved RemoteFileSystem block
    tr = [t for t in ops.task_runs(fr_id) if t["name"].startswith("distill-shard")]
    assert len(tr) == 2
    for t in tr:  # results go to the saved RemoteFileSystem block on the storage root
        block = ops.http.get(f"/block_documents/{t['state']['data']['storage_block_id']}").json()
        assert block["data"]["basepath"] == f"{ROOT}/_prefect-results"


def test_verify_judge_release_deployment_reuses_persisted_results(ops):
    judged = len(ops.judge.requests())
    fr_id = ops.run_deployment("finr1-pipeline/verify-judge-release", config=ops.cfg_path, run_id="ops-1")
    fr = ops.wait(fr_id)
    assert fr["state_type"] == "COMPLETED", ops.flow_log(fr_id) + ops.worker_log()
    # the score shards of the earlier flow run are found committed in the store and skipped
    scores = [t for t in ops.task_runs(fr_id) if t["name"].startswith("score-shard")]
    assert len(scores) == 2 and {t["state"]["name"] for t in scores} == {"Completed"}
    assert len(ops.judge.requests()) == judged  # nothing judged twice
    store = ops.store("ops-1")
    summary = store.stage_manifest("release")["summary"]
    assert summary["scored"] == 8 and summary["sft"] + summary["rl"] + sum(summary["removed"].values()) == 8
    arts = ops.artifacts(fr_id)
    assert f"({ROOT}/ops-1/release)" in arts["release"]["data"]  # a link artifact
    table = {r["stage"]: r for r in json.loads(arts["stage-summary"]["data"])}
    assert table["split + release"]["rows in"] == 8


def test_incremental_redistill_sends_only_new_records(ops):
    before = set(ops.teacher_keys())
    ops.teacher.reset()
    fr_id = ops.run_deployment("finr1-redistill/re-distill", config=ops.cfg_path, limit=12, run_id="ops-redistill")
    fr = ops.wait(fr_id)
    assert fr["state_type"] == "COMPLETED", ops.flow_log(fr_id) + ops.worker_log()
    store = ops.store("ops-redistill")
    new_shard = {r["key"] for r in store.read_shard("distill", "shard-00002").to_pylist()}
    sent = ops.teacher_keys()
    assert len(sent) == 4 and set(sent) == new_shard and not (new_shard & before)  # only the 4 new records
    assert store.stage_manifest("distill")["rows"] == 12
    rows = {r["measure"]: r["value"] for r in json.loads(ops.artifacts(fr_id)["re-distill"]["data"])}
    assert rows["sent to the teacher (new or changed)"] == 4 and rows["found in the response cache (not sent)"] == 8
    latest = json.loads(store.read_bytes(f"{ROOT}/_release/latest.json"))
    assert latest["run_id"] == "ops-redistill" and latest["distill"]["requested"] == 4
    assert store.exists(f"{ROOT}/_release/latest/README.md") or latest["files"] > 0


def test_failed_shard_then_flow_run_retry_redoes_only_that_shard(ops):
    ops.teacher.reset()
    ops.teacher.configure(rate_500=1.0)  # the teacher fails every request: only uncached ones reach it
    fr_id = ops.run_deployment("finr1-pipeline/embedded", config=ops.cfg_path, limit=16, run_id="ops-fail", stop_after="score")
    fr = ops.wait(fr_id)
    assert fr["state_type"] == "FAILED", fr["state_name"]
    md = ops.artifacts(fr_id)["failed-shards"]["data"]
    assert "| shard-00003 |" in md and "shard-00000" not in md and "prefect flow-run retry" in md
    store = ops.store("ops-fail")
    assert [e["shard"] for e in store.shards("distill")] == ["shard-00000", "shard-00001", "shard-00002"]
    committed = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in ("distill", "scored")}
    assert len(set(ops.teacher_keys())) == 4  # only shard-00003's requests were tried (and failed)

    ops.teacher.configure(rate_500=0.0)
    ops.teacher.reset()
    p = ops.cli("prefect", "flow-run", "retry", fr_id)
    assert p.returncode == 0, p.stdout + p.stderr
    time.sleep(1)
    fr = ops.wait(fr_id)
    assert fr["state_type"] == "COMPLETED", ops.flow_log(fr_id) + ops.worker_log()
    assert fr["run_count"] >= 2
    shard3 = {r["key"] for r in store.read_shard("distill", "shard-00003").to_pylist()}
    sent = ops.teacher_keys()
    assert len(sent) == 4 and set(sent) == shard3  # only the failed shard, each request once
    after = {st: {e["shard"]: e["committed_at"] for e in store.shards(st)} for st in ("distill", "scored")}
    for st in after:
        for shard, t in committed[st].items():
            assert after[st][shard] == t, f"{st}/{shard} was rewritten"
    assert store.stage_manifest("distill")["rows"] == 16


def test_server_down_stops_worker_and_server(ops):
    n_runs = int(psql(ops.db, "select count(*) from flow_run"))
    p = ops.cli("finr1", "server", "down", "--home", str(ops.home))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"stopped worker (pid {ops.state['worker_pid']}" in p.stdout and "Server stopped!" in p.stdout, p.stdout
    assert not _group_alive(ops.state["worker_pid"]) and not _alive(ops.state["server_pid"])
    assert not (ops.home / "server.pid").exists() and not (ops.home / "worker.json").exists()
    assert n_runs > 0 and int(psql(ops.db, "select count(*) from flow_run")) == n_runs  # the runs stay in PostgreSQL
