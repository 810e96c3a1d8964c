"""The shard store on a local path and on a real S3-compatible server (moto's)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from moto.server import ThreadedMotoServer

from finr1_core.storage import ShardUnreadable, Store, check_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3_root():
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import s3fs

    opts = {"key": "test", "secret": "test", "endpoint_url": endpoint}
    s3fs.S3FileSystem(**opts).mkdir("finr1-test")
    yield "s3://finr1-test/runs", opts
    srv.stop()


def _roundtrip(store: Store):
    assert store.shards("distill") == []
    assert store.read_stage("distill").num_rows == 0
    rows = [{"id": f"r{i}", "x": i, "text": "<think>\n…"} for i in range(5)]
    info = store.write_shard("distill", "shard-00001", rows[2:], cfg_hash="h1", source_shards=["prompts/shard-00001"])
    store.write_shard("distill", "shard-00000", rows[:2], cfg_hash="h1")
    assert info.rows == 3
    assert [e["shard"] for e in store.shards("distill")] == ["shard-00000", "shard-00001"]
    assert store.read_stage("distill").column("id").to_pylist() == [r["id"] for r in rows]
    assert store.shard_committed("distill", "shard-00000", "h1")
    assert not store.shard_committed("distill", "shard-00000", "other-config")
    assert not store.shard_committed("distill", "shard-00002")
    m = store.complete_stage("distill", "h1")
    assert m["rows"] == 5 and store.stage_complete("distill", "h1") and not store.stage_complete("distill", "h2")
    entry = store.shards("distill")[1]
    assert entry["source_shards"] == ["prompts/shard-00001"] and entry["config_hash"] == "h1"
    assert any(s.startswith("text") for s in entry["schema"])
    # a file dropped into the stage without a manifest entry is not part of the stage
    store.write_bytes_atomic(store.uri("distill", "stray.parquet"), b"partial")
    assert store.read_stage("distill").num_rows == 5


def test_local_store(tmp_path):
    store = Store(str(tmp_path / "runs"), "run1")
    _roundtrip(store)
    assert (tmp_path / "runs" / "run1" / "distill" / "_manifest.json").exists()
    assert not list((tmp_path / "runs" / "run1" / "distill").glob(".tmp-*"))


def test_s3_store_on_moto(s3_root):
    root, opts = s3_root
    store = Store(root, "run1", storage_options=opts)
    _roundtrip(store)
    assert store.fs.exists("finr1-test/runs/run1/distill/shard-00000.parquet")
    t = store.read_shard("distill", "shard-00000")
    assert isinstance(t, pa.Table) and t.num_rows == 2


# ------------------------------------------------------------------ integrity of committed shards
def _integrity(store: Store):
    rows = [{"id": f"r{i}", "x": i} for i in range(6)]
    a = store.write_shard("distill", "shard-00000", rows[:3], cfg_hash="h1")
    store.write_shard("distill", "shard-00001", rows[3:], cfg_hash="h1")
    store.complete_stage("distill", "h1")
    entry = store.shard_entry("distill", "shard-00000")
    data = store.read_bytes(store.uri("distill", "shard-00000.parquet"))
    assert entry["size"] == a.size == len(data) and entry["rows"] == 3
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.stage_manifest("distill")["shards"][0]["sha256"] == entry["sha256"]
    assert store.verify("distill") == {"shard-00000": "ok", "shard-00001": "ok"}

    # delete one shard file: it is missing, no longer committed, the stage is no longer complete
    store.fs.rm_file(store.fs_path(store.uri("distill", "shard-00000.parquet")))
    assert store.verify("distill") == {"shard-00000": "missing", "shard-00001": "ok"}
    assert not store.shard_committed("distill", "shard-00000", "h1")
    assert store.shard_committed("distill", "shard-00001", "h1")
    assert not store.stage_complete("distill", "h1")
    with pytest.raises(ShardUnreadable, match=r"distill/shard-00000: shard file missing .*finr1 retry-failed"):
        store.read_stage("distill")

    # truncate the other: damaged (size differs: the cheap check sees it)
    store.write_bytes_atomic(store.uri("distill", "shard-00001.parquet"), store.read_bytes(store.uri("distill", "shard-00001.parquet"))[:-40])
    assert store.verify("distill", deep=False)["shard-00001"] == "damaged"
    assert not store.shard_committed("distill", "shard-00001")

    # rewrite: both intact again, the stage completes
    store.write_shard("distill", "shard-00000", rows[:3], cfg_hash="h1")
    store.write_shard("distill", "shard-00001", rows[3:], cfg_hash="h1")
    assert store.stage_complete("distill", "h1", deep=True)

    # same size, other bytes: the quick check (fast hash locally, ETag on S3) sees it too
    uri = store.uri("distill", "shard-00001.parquet")
    raw = bytearray(store.read_bytes(uri))
    raw[len(raw) // 2] ^= 0xFF
    store.write_bytes_atomic(uri, bytes(raw))
    assert not store.shard_committed("distill", "shard-00001", "h1")
    assert not store.shard_committed("distill", "shard-00001", "h1", deep=True)
    assert store.verify("distill") == {"shard-00000": "ok", "shard-00001": "damaged"}
    assert store.verify("distill", deep=False) == {"shard-00000": "ok", "shard-00001": "damaged"}
    assert not store.stage_complete("distill", "h1") and not store.stage_complete("distill", "h1", deep=True)
    lines, ok = check_run(store)
    assert not ok and "distill: 2 shard(s), complete: 1 ok, 0 missing, 1 damaged" in lines
    assert "  damaged  distill/shard-00001" in lines and lines[-1].endswith(store.cli_command("retry-failed"))


def test_integrity_local(tmp_path):
    _integrity(Store(str(tmp_path / "runs"), "run1"))


def test_integrity_s3_on_moto(s3_root):
    root, opts = s3_root
    _integrity(Store(root, "run-integrity", storage_options=opts))


def test_entries_without_sizes_still_count(tmp_path):
    """Entries written before sizes and hashes were recorded: existence (and a Parquet footer) decide."""
    store = Store(str(tmp_path / "runs"), "old")
    store.write_shard("prompts", "shard-00000", [{"a": 1}], cfg_hash="h")
    e = store.shard_entry("prompts", "shard-00000")
    del e["size"], e["sha256"], e["xxh3_64"], e["etag"]
    store.write_json(store.uri("prompts", "_shards", "shard-00000.json"), e)
    assert store.shard_committed("prompts", "shard-00000", "h", deep=True)
    store.write_bytes_atomic(store.uri("prompts", "shard-00000.parquet"), b"not parquet")
    assert store.shard_committed("prompts", "shard-00000", "h")
    assert store.verify("prompts") == {"shard-00000": "damaged"}


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _two_stage_run(store: Store):
    store.write_json(store.uri("config.json"), {"run_id": store.run_id})
    for st in ("prompts", "distill"):
        for i in range(2):
            store.write_shard(st, f"shard-{i:05d}", [{"k": f"{st}{i}"}], cfg_hash="h")
        store.complete_stage(st, "h")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_check_cli(tmp_path, where, s3_root):
    if where == "local":
        root, opts, env = str(tmp_path / "runs"), None, {}
    else:
        root, opts = s3_root[0] + "-cli", s3_root[1]
        env = {"AWS_ENDPOINT_URL": opts["endpoint_url"], "AWS_ACCESS_KEY_ID": opts["key"], "AWS_SECRET_ACCESS_KEY": opts["secret"]}
    store = Store(root, "r1", storage_options=opts)
    _two_stage_run(store)
    ok = _cli(["check", "r1", "--storage", root], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "distill: 2 shard(s), complete: 2 ok, 0 missing, 0 damaged" in ok.stdout and "all shards intact" in ok.stdout
    store.fs.rm_file(store.fs_path(store.uri("distill", "shard-00001.parquet")))
    uri = store.uri("prompts", "shard-00000.parquet")
    store.write_bytes_atomic(uri, store.read_bytes(uri)[:10])
    bad = _cli(["check", "r1", "--storage", root], env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    out = bad.stdout.splitlines()
    assert "  missing  distill/shard-00001" in out and "  damaged  prompts/shard-00000" in out
    assert out[-1] == f"2 shard(s) missing or damaged; repair: finr1 retry-failed r1 --storage {root}"
    none = _cli(["check", "nope", "--storage", root], env)
    assert none.returncode == 2 and "no run 'nope'" in none.stderr
