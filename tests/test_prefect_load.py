"""Load on a real Prefect server (PostgreSQL) through one process worker: 20 concurrent flow runs of
50 mapped shards each. Every run completes, every task run arrives in the API as Completed, none is
stuck or lost. Prints its figures (wall time, per-run durations). Minutes long: marked heavy."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.pg import fresh_database, psql

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parent.parent
RUNS, SHARDS = 20, 50
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path, monkeypatch):
    from flows.server import server_down, server_up

    with fresh_database("finr1_load") as (url, db):
        for k, v in {"PREFECT_API_DATABASE_CONNECTION_URL": url, "PREFECT_WORKER_QUERY_SECONDS": "1",
                     "PYTHONPATH": str(REPO)}.items():
            monkeypatch.setenv(k, v)
        home = tmp_path / "prefect"
        try:
            st = server_up(port=_free_port(), home=str(home), deploy=False, log=print)
            st["db"] = db
            yield st
        finally:
            server_down(home=str(home), log=print)


def _deploy(st: dict, tmp_path: Path) -> str:
    pf = tmp_path / "load.yaml"
    pf.write_text(yaml.safe_dump({"name": "finr1-load", "deployments": [{
        "name": "load", "entrypoint": "tests/load_flow.py:load_flow", "work_pool": {"name": "finr1-process"}}]}))
    from flows.server import prefect_env

    env = prefect_env(Path(st["prefect_home"]), st["api_url"])
    exe = str(Path(sys.executable).with_name("prefect"))
    p = subprocess.run([exe, "--no-prompt", "deploy", "--all", "--prefect-file", str(pf)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return httpx.get(f"{st['api_url']}/deployments/name/finr1-load/load", timeout=30).json()["id"]


def test_20_runs_of_50_shards_through_one_worker(server, tmp_path):
    api = httpx.Client(base_url=server["api_url"], timeout=60)
    dep = _deploy(server, tmp_path)
    t0 = time.time()
    ids = [api.post(f"/deployments/{dep}/create_flow_run", json={"parameters": {"n": SHARDS}}).json()["id"] for _ in range(RUNS)]
    runs: list[dict] = []
    while time.time() - t0 < 1500:
        runs = api.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": ids}}, "limit": RUNS}).json()
        if len(runs) == RUNS and all(r["state_type"] in TERMINAL for r in runs):
            break
        time.sleep(3)
    wall = time.time() - t0
    states = {r["id"]: r["state_type"] for r in runs}
    assert len(runs) == RUNS, f"lost flow runs: {set(ids) - set(states)}"
    assert set(states.values()) == {"COMPLETED"}, states
    # every task state arrives: the server records task runs from the events the flow-run processes
    # send, so give it time to catch up, and watch it progress
    t1 = time.time()
    progress = []
    while True:
        rows = psql(server["db"], "select flow_run_id, count(*), count(*) filter (where state_type = 'COMPLETED') "
                                  "from task_run group by 1")
        per = {l.split("|")[0]: (int(l.split("|")[1]), int(l.split("|")[2])) for l in rows.splitlines() if l}
        done = sum(c for _, c in per.values())
        progress.append((round(time.time() - t1), done))
        if done >= RUNS * SHARDS or time.time() - t1 > 600:
            break
        time.sleep(5)
    catch_up = time.time() - t1
    print(f"\ntask runs recorded over time (s, completed): {progress}")
    assert {i: per.get(i, (0, 0)) for i in ids} == {i: (SHARDS, SHARDS) for i in ids}, (per, progress)
    api_done = sum(api.post("/task_runs/count", json={"flow_runs": {"id": {"any_": [i]}},
                                                       "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json() for i in ids)
    assert api_done == RUNS * SHARDS
    durs = sorted(r["total_run_time"] for r in runs)
    starts = sorted(r["start_time"] for r in runs)
    print(f"\nload: {RUNS} flow runs x {SHARDS} shards through one process worker on PostgreSQL: all {RUNS} Completed, "
          f"{api_done}/{RUNS * SHARDS} task runs Completed; wall {wall:.0f} s from creation to the last run terminal; "
          f"task states complete {catch_up:.1f} s later; run time min/median/max {durs[0]:.1f}/{durs[len(durs) // 2]:.1f}/{durs[-1]:.1f} s; "
          f"first/last start {starts[0]} / {starts[-1]}")
    (tmp_path / "figures.json").write_text(json.dumps({"wall_s": wall, "catch_up_s": catch_up, "run_times": durs}))
