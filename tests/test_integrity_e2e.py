"""Run integrity through the CLI: lost or damaged shards are detected (`finr1 check`) and rebuilt from
the response cache with no new teacher request; a saved config is fixed with `retry-failed --set`;
two runs on one id pay the teacher once.

Real Prefect (ephemeral, in `finr1` subprocesses), real local Ray, tests/fake_openai.py as teacher
and judge (separate processes, counting every request), real storage.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from finr1_core.storage import Store

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent





def _finr1(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _teacher_keys(w) -> list[str]:
    return [r["key"] for r in w["teacher"].requests() if r.get("key")]


def _damage(store: Store, stage: str, shard: str, how: str) -> None:
    uri = store.uri(stage, f"{shard}.parquet")
    if how == "delete":
        store.fs.rm_file(store.fs_path(uri))
    else:
        store.write_bytes_atomic(uri, store.read_bytes(uri)[: 200])


def _repair_and_assert_whole(w, store: Store, clean_keys: set[str], paid: Counter, lost: list[str]) -> None:
    """`finr1 retry-failed`, then: every shard intact, the clean run's keys exactly once, 0 new teacher requests."""
    again = _finr1(["retry-failed", store.run_id, "--storage", w["storage"], "--stop-after", "score"], w["env"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"distill: {len(lost)} shard(s) to redo: {', '.join(sorted(lost))}" in again.stdout, again.stdout[-2000:]
    chk = _finr1(["check", store.run_id, "--storage", w["storage"]], w["env"], 120)
    assert chk.returncode == 0 and "all shards intact" in chk.stdout, chk.stdout + chk.stderr
    assert Counter(_teacher_keys(w)) == paid  # rebuilt from the response cache: 0 new teacher requests
    keys = [r["key"] for r in store.read_rows("distill")]
    assert len(keys) == len(set(keys)) and set(keys) == clean_keys
    assert store.stage_manifest("scored")["rows"] == len(clean_keys)


@pytest.mark.heavy  # ~70 s; the mid-run case below repairs the same way, and test_storage checks `finr1 check`'s lines
def test_lost_shards_after_the_run_are_found_and_rebuilt_for_free(world):
    w = world
    first = _finr1(["run", "--config", w["config"], "--storage", w["storage"], "--run-id", "i1", "--stop-after", "score"], w["env"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    store = Store(w["storage"], "i1")
    clean = {r["key"] for r in store.read_rows("distill")}
    paid = Counter(_teacher_keys(w))
    assert set(paid) == clean and set(paid.values()) == {1}
    _damage(store, "distill", "shard-00000", "delete")
    _damage(store, "distill", "shard-00001", "truncate")
    chk = _finr1(["check", "i1", "--storage", w["storage"]], w["env"], 120)
    lines = chk.stdout.splitlines()
    assert chk.returncode == 1 and "  missing  distill/shard-00000" in lines and "  damaged  distill/shard-00001" in lines, chk.stdout + chk.stderr
    assert lines[-1] == f"2 shard(s) missing or damaged; repair: finr1 retry-failed i1 --storage {w['storage']}"
    _repair_and_assert_whole(w, store, clean, paid, ["shard-00000", "shard-00001"])


def test_lost_shards_mid_run_are_found_and_rebuilt_for_free(world):
    """The first distill shard to commit is deleted, the second truncated, while the run goes on."""
    w = world
    store = Store(w["storage"], "i2")
    stop = threading.Event()
    hit: list[str] = []

    def saboteur():
        while not stop.is_set() and len(hit) < 2:
            for e in store.shards("distill") if store.exists(store.uri("distill", "_shards")) else []:
                if e["shard"] not in hit:
                    _damage(store, "distill", e["shard"], "truncate" if hit else "delete")
                    hit.append(e["shard"])
                    break
            time.sleep(0.05)

    t = threading.Thread(target=saboteur, daemon=True)
    t.start()
    first = _finr1(["run", "--config", w["config"], "--storage", w["storage"], "--run-id", "i2", "--stop-after", "score"], w["env"])
    stop.set()
    t.join(5)
    out = first.stdout + first.stderr
    assert len(hit) == 2, out[-3000:]
    # detected: score refused the lost input with one line naming it and the repair
    assert first.returncode == 2 and f"distill/{hit[0]}: shard file missing" in out and "finr1 retry-failed i2" in out, out[-4000:]
    paid = Counter(_teacher_keys(w))
    prompts = {r["record_id"] for r in store.read_rows("prompts")}
    assert len(paid) == len(prompts) and set(paid.values()) == {1}
    _repair_and_assert_whole(w, store, set(paid), paid, hit)


def test_retry_failed_set_fixes_a_bad_endpoint(world):
    """A run started against a dead teacher port fails at distill; `--set` points it at the live one."""
    w = world
    dead = dict(w["cfg"])
    dead["teacher"] = {**w["cfg"]["teacher"], "endpoints": [{"name": "t", "base_url": "http://127.0.0.1:9/v1"}], "max_retries": 0}
    path = w["tmp"] / "dead.yaml"
    path.write_text(yaml.safe_dump(dead, allow_unicode=True))
    # the pre-flight names the dead endpoint before any work
    pre = _finr1(["run", "--config", str(path), "--storage", w["storage"], "--run-id", "i3", "--stop-after", "distill"], w["env"])
    assert pre.returncode == 2 and "127.0.0.1:9" in pre.stderr, pre.stdout[-3000:] + pre.stderr[-3000:]
    assert not (Path(w["storage"]) / "i3").exists()
    # an endpoint that dies after the pre-flight: the run fails at distill, and --set repairs it
    first = _finr1(["run", "--config", str(path), "--storage", w["storage"], "--run-id", "i3", "--stop-after", "distill", "--no-preflight"], w["env"])
    assert first.returncode == 2 and "finr1 retry-failed i3" in first.stderr, first.stdout[-3000:] + first.stderr[-3000:]
    assert _teacher_keys(w) == []
    url = w["teacher"].url
    again = _finr1(["retry-failed", "i3", "--storage", w["storage"], "--stop-after", "distill",
                    "--set", f"teacher.endpoints.0.base_url={url}", "--set", "teacher.max_retries=1"], w["env"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    store = Store(w["storage"], "i3")
    keys = Counter(_teacher_keys(w))
    assert set(keys) == {r["key"] for r in store.read_rows("distill")} and set(keys.values()) == {1}
    from finr1_core.lineage import read_lineage

    lin = read_lineage(store)
    assert lin[-1]["set"] == {"teacher.endpoints.0.base_url": url, "teacher.max_retries": 1}
    assert lin[-1]["before"]["teacher.endpoints.0.base_url"] == "http://127.0.0.1:9/v1"
    assert store.read_json(store.uri("config.json"))["teacher"]["endpoints"][0]["base_url"] == url


def test_two_runs_on_one_id_pay_the_teacher_once(world):
    w = world
    args = ["run", "--config", w["config"], "--storage", w["storage"], "--run-id", "i4", "--stop-after", "distill"]
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=w["env"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(600), *p.communicate()) for p in procs]
    codes = sorted(o[0] for o in outs)
    assert codes == [0, 2], [o[2][-2000:] for o in outs]
    loser = next(o for o in outs if o[0] == 2)
    assert "run i4 is in use by" in loser[2] and "--wait" in loser[2]
    store = Store(w["storage"], "i4")
    keys = Counter(_teacher_keys(w))
    assert set(keys) == {r["key"] for r in store.read_rows("distill")} and set(keys.values()) == {1}
