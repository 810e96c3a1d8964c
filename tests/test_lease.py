"""One owner per run id: real processes race for the lease on a local root and on moto's S3 server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finr1_core.lease import LeaseHeld, LeaseLost, RunLease

REPO = Path(__file__).resolve().parent.parent

# A taker: waits for a common start time, tries the lease, prints WIN or HELD <message>, holds it.
TAKER = r"""
import json, sys, time
from finr1_core.lease import LeaseHeld, RunLease
root, run_id, start, hold, ttl, opts = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
lease = RunLease(root, run_id, owner=f"taker-{sys.argv[7]}", ttl_s=ttl, storage_options=opts or None)
time.sleep(max(0.0, start - time.time()))
try:
    lease.acquire()
except LeaseHeld as e:
    print("HELD", e, flush=True)
    sys.exit(3)
print("WIN", lease.owner, flush=True)
time.sleep(hold)
lease.release()
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _spawn(root, run_id, start, hold, ttl, opts, i):
    return subprocess.Popen([sys.executable, "-c", TAKER, root, run_id, str(start), str(hold), str(ttl), json.dumps(opts or {}), str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


@pytest.fixture
def roots(tmp_path, request, moto_s3):
    if request.param == "local":
        return str(tmp_path / "runs"), None
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3)
    if not fs.exists("finr1-lease"):
        fs.mkdir("finr1-lease")
    return "s3://finr1-lease/runs", dict(moto_s3)


@pytest.mark.parametrize("roots", ["local", "s3"], indirect=True)
def test_concurrent_takers_exactly_one_wins(roots):
    root, opts = roots
    start = time.time() + 4.0  # every process is up and importing done by then
    procs = [_spawn(root, "same-id", start, 3.0, 30, opts, i) for i in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        outs.append((p.returncode, out.strip(), err[-2000:]))
    wins = [o for o in outs if o[0] == 0]
    held = [o for o in outs if o[0] == 3]
    assert len(wins) == 1 and len(held) == 3, outs
    winner = wins[0][1].split()[1]
    for _, line, _ in held:
        assert line.count("\n") == 0 and f"run same-id is in use by {winner} (host " in line
        assert "--wait" in line and "take the lease over" in line
    assert RunLease(root, "same-id", storage_options=opts).read() is None  # the winner released it


@pytest.mark.parametrize("roots", ["local", "s3"], indirect=True)
def test_killed_owner_is_taken_over_at_once_and_a_remote_one_after_ttl(roots):
    root, opts = roots
    owner = _spawn(root, "crashy", time.time(), 600, 2.0, opts, "dead")
    line = owner.stdout.readline()
    assert line.startswith("WIN taker-dead"), line + owner.stderr.read()[-2000:]
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(10)
    owner.stdout.close()
    owner.stderr.close()
    # the holder is a dead process of this host: taken over at once, not after the ttl
    t0 = time.monotonic()
    with RunLease(root, "crashy", owner="later", ttl_s=5, storage_options=opts) as lease:
        assert time.monotonic() - t0 < 1.5
        assert lease.took_over["owner"] == "taker-dead" and lease.took_over["pid"] == owner.pid
        doc = lease.read()
        assert doc["owner"] == "later" and doc["pid"] == os.getpid() and doc["token"] == lease.token
    assert lease.read() is None
    # a holder on another host cannot be checked: it keeps the lease until its heartbeat is older than the ttl
    remote = RunLease(root, "crashy-remote", storage_options=opts)
    remote.store.write_json(remote.uri, {"owner": "far", "host": "other-host", "pid": owner.pid, "heartbeat": time.time(), "ttl_s": 2.0})
    with pytest.raises(LeaseHeld, match="run crashy-remote is in use by far"):
        RunLease(root, "crashy-remote", owner="early", ttl_s=5, storage_options=opts).acquire()
    time.sleep(2.5)
    with RunLease(root, "crashy-remote", owner="later", ttl_s=5, storage_options=opts) as lease:
        assert lease.took_over["owner"] == "far"


@pytest.mark.parametrize("roots", ["local", "s3"], indirect=True)
def test_heartbeat_keeps_it_live_and_wait_blocks_until_free(roots):
    root, opts = roots
    holder = RunLease(root, "busy", owner="holder", ttl_s=1.0, heartbeat_s=0.2, storage_options=opts).acquire()
    try:
        first = holder.read()["heartbeat"]
        time.sleep(2.0)  # twice the ttl: only the heartbeat keeps it live
        assert holder.read()["heartbeat"] > first
        with pytest.raises(LeaseHeld, match="in use by holder"):
            RunLease(root, "busy", owner="second", ttl_s=1.0, storage_options=opts).acquire()
        with pytest.raises(LeaseHeld):
            RunLease(root, "busy", owner="third", ttl_s=1.0, wait=True, wait_timeout_s=0.5, storage_options=opts).acquire()
        t0 = time.monotonic()
        import threading

        threading.Timer(1.0, holder.release).start()
        waited = RunLease(root, "busy", owner="waiter", ttl_s=5, wait=True, storage_options=opts).acquire()
        assert 0.8 < time.monotonic() - t0 < 10 and waited.read()["owner"] == "waiter" and waited.took_over is None
        waited.release()
    finally:
        holder.release()


@pytest.mark.parametrize("roots", ["local", "s3"], indirect=True)
def test_lost_lease_is_reported(roots):
    root, opts = roots
    lease = RunLease(root, "stolen", owner="victim", ttl_s=1.0, heartbeat_s=0.2, storage_options=opts).acquire()
    doc = dict(lease.read(), token="someone-else", owner="thief")
    lease.store.write_json(lease.uri, doc)  # a foreign writer replaced it
    assert lease.lost.wait(5)
    with pytest.raises(LeaseLost, match="run stolen: lease lost"):
        lease.ensure()
    lease.release()
    assert lease.read()["owner"] == "thief"  # release never removes somebody else's lease


def test_s3_server_honours_conditional_puts(moto_s3):
    """The S3 lease relies on If-None-Match: * and If-Match; the server must reject both when they fail."""
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3)
    if not fs.exists("finr1-lease"):
        fs.mkdir("finr1-lease")
    p = "finr1-lease/cond/obj.json"
    first = fs.pipe_file(p, b"1", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(p, b"2", mode="create")
    fs.pipe_file(p, b"3", IfMatch=first["ETag"])
    with pytest.raises(OSError):
        fs.pipe_file(p, b"4", IfMatch=first["ETag"])  # stale ETag
    assert fs.cat_file(p) == b"3"


def test_check_free_fails_fast_without_taking(tmp_path):
    root = str(tmp_path / "runs")
    from finr1_core.lease import check_free

    assert check_free(root, "r") is None
    with RunLease(root, "r", owner="busy-owner", ttl_s=30):
        with pytest.raises(LeaseHeld, match="run r is in use by busy-owner"):
            check_free(root, "r")
    assert check_free(root, "r") is None  # released
    crashed = RunLease(root, "r2")
    crashed.store.write_json(crashed.uri, {"owner": "gone", "host": "h", "pid": 1, "heartbeat": time.time() - 100, "ttl_s": 30})
    assert check_free(root, "r2")["owner"] == "gone" and crashed.read()["owner"] == "gone"  # expired, and not taken
