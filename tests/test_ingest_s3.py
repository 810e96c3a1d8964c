"""Ingest to an s3:// output on moto's real S3 server."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import s3fs

from finr1_core.ingest import ingest
from finr1_core.records import RECORD_SCHEMA, table_to_records

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def test_ingest_to_s3_on_moto(moto_s3):
    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"], endpoint_url=moto_s3["endpoint_url"])
    fs.mkdir("finr1-ingest")
    opts = {"key": moto_s3["key"], "secret": moto_s3["secret"], "endpoint_url": moto_s3["endpoint_url"]}
    out = "s3://finr1-ingest/run-1/ingest"
    c1 = ingest("cfbenchmark", str(SAMPLES / "cfbenchmark" / "sample.jsonl"), out, storage_options=opts)
    c2 = ingest("tfns", str(SAMPLES / "tfns" / "sample.jsonl"), out, storage_options=opts)
    assert (c1["rows_in"], c1["records"], c1["quarantined"]) == (40, 38, 2)
    assert c2["records"] == 40 and c1["records_uri"] == f"{out}/records/cfbenchmark.parquet"
    fs.invalidate_cache()
    listed = sorted(p.split("/", 2)[2] for p in fs.find("finr1-ingest/run-1/ingest"))
    assert listed == [
        "ingest/quarantine/_shards/cfbenchmark.json", "ingest/quarantine/_shards/tfns.json",
        "ingest/quarantine/cfbenchmark.parquet", "ingest/quarantine/tfns.parquet",
        "ingest/records/_shards/cfbenchmark.json", "ingest/records/_shards/tfns.json",
        "ingest/records/cfbenchmark.parquet", "ingest/records/tfns.parquet",
    ]
    rec = pq.read_table(io.BytesIO(fs.cat_file("finr1-ingest/run-1/ingest/records/tfns.parquet")))
    assert rec.schema.equals(RECORD_SCHEMA)
    rows = table_to_records(rec)
    assert [r["answer"] for r in rows[:3]] == ["Bearish", "Bullish", "Neutral"]
    q = pq.read_table(io.BytesIO(fs.cat_file("finr1-ingest/run-1/ingest/quarantine/cfbenchmark.parquet"))).to_pylist()
    assert [r["reason"] for r in q] == ["no gold answer (answer is 'nan' in the source)"] * 2
    assert json.loads(q[0]["raw"])["answer"] == "nan"
    entry = json.loads(fs.cat_file("finr1-ingest/run-1/ingest/records/_shards/cfbenchmark.json"))
    assert entry["rows"] == 38 and entry["extra"]["rows_in"] == 40
