"""The shard store on a local path and on a real S3-compatible server (moto's)."""
from __future__ import annotations

import pyarrow as pa
import pytest
from moto.server import ThreadedMotoServer

from finr1_core.storage import Store


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
