"""Sources read from s3:// (moto's real S3 server) in every loader format give the same records as
the same files read locally; credentials come from the environment and are never written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from finr1_core.config import ConfigError, SourceSpec, load_config
from finr1_core.ingest import ingest_sources
from finr1_core.sources import load_source
from finr1_core.sources.io import IngestError

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"


def _tfns_rows() -> list[dict]:
    return [json.loads(x) for x in (SAMPLES / "tfns" / "sample.jsonl").read_text().splitlines() if x.strip()]


def _write_formats(root: Path) -> None:
    """tfns split over every format, in nested directories, plus a hidden file and a stray file."""
    rows = _tfns_rows()
    parts = [rows[0:8], rows[8:16], rows[16:24], rows[24:32], rows[32:]]
    (root / "a" / "b").mkdir(parents=True)
    (root / "json_part.json").write_text(json.dumps(parts[0]))
    (root / "a" / "jsonl_part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in parts[1]))
    pd.DataFrame(parts[2]).to_csv(root / "a" / "csv_part.csv", index=False)
    pq.write_table(pa.Table.from_pylist(parts[3]), root / "a" / "b" / "parquet_part.parquet")
    t = pa.Table.from_pylist(parts[4])
    with pa.OSFile(str(root / "a" / "b" / "arrow_part.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t)
    (root / "README.txt").write_text("not data")
    (root / ".hidden.jsonl").write_text('{"text": "x", "label": 0}\n')


@pytest.fixture(scope="module")
def s3_sources(moto_s3, tmp_path_factory):
    local = tmp_path_factory.mktemp("tfns")
    _write_formats(local)
    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"], endpoint_url=moto_s3["endpoint_url"])
    fs.mkdir("finr1-raw")
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"finr1-raw/tfns/{p.relative_to(local).as_posix()}")
    env = {"AWS_ENDPOINT_URL": moto_s3["endpoint_url"], "AWS_ACCESS_KEY_ID": moto_s3["key"], "AWS_SECRET_ACCESS_KEY": moto_s3["secret"]}
    return local, "s3://finr1-raw/tfns", env, fs


def _strip_provenance(recs: list[dict]) -> list[dict]:
    out = []
    for r in recs:
        r = dict(r)
        r.pop("source_file", None)
        r["meta"] = {k: v for k, v in (r.get("meta") or {}).items() if k != "provenance"}
        out.append(r)
    return out


def test_every_format_from_s3_matches_local(s3_sources, monkeypatch):
    local, uri, env, _ = s3_sources
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    loc = load_source("tfns", str(local))
    rem = load_source("tfns", uri)
    assert loc.rows_in == rem.rows_in == 40 and len(rem.records) == 40 and not rem.quarantine
    assert _strip_provenance(rem.records) == _strip_provenance(loc.records)
    # every format contributed, in directory-walk order (a directory's files before its subdirectories)
    files = [r["meta"]["provenance"]["source_file"] for r in rem.records]
    assert list(dict.fromkeys(files)) == [
        f"{uri}/json_part.json", f"{uri}/a/csv_part.csv", f"{uri}/a/jsonl_part.jsonl",
        f"{uri}/a/b/arrow_part.arrow", f"{uri}/a/b/parquet_part.parquet",
    ]
    assert rem.skipped_files == [f"{uri}/README.txt"]
    one = load_source("tfns", f"{uri}/a/b/parquet_part.parquet")
    assert [r["answer"] for r in one.records] == [r["answer"] for r in loc.records if r["meta"]["provenance"]["source_file"].endswith("parquet_part.parquet")]


def test_storage_options_from_config_override_env(s3_sources, monkeypatch):
    """endpoint_url from the spec's storage_options, keys from the environment; no AWS_ENDPOINT_URL."""
    local, uri, env, _ = s3_sources
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
    spec = SourceSpec(name="tfns", path=uri, storage_options={"endpoint_url": env["AWS_ENDPOINT_URL"]}, max_rows=10)
    recs, quar = ingest_sources([spec])
    assert len(recs) == 10 and not quar
    assert "key" not in json.dumps(spec.model_dump()).replace("storage_options", "")


def test_config_rejects_credentials_in_storage_options(tmp_path):
    cfg = (REPO / "configs" / "embedded.yaml").read_text().replace(
        '- {name: tfns,                  path: "${REPO}/data/samples/tfns"}',
        '- {name: tfns, path: "s3://b/tfns", storage_options: {endpoint_url: "http://x", secret: "s3cr3t"}}')
    p = tmp_path / "c.yaml"
    p.write_text(cfg)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "data.sources.2.storage_options" in msg and "credentials" in msg and "\n" not in msg


def test_missing_s3_path_is_one_line(s3_sources, monkeypatch):
    _, _, env, _ = s3_sources
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(IngestError, match=r"s3://finr1-raw/nope: no such file or directory"):
        load_source("tfns", "s3://finr1-raw/nope")


def test_cli_ingest_from_s3_to_s3(s3_sources, tmp_path):
    local, uri, env, fs = s3_sources
    fs.mkdir("finr1-out")
    penv = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", "--source", "tfns", "--path", uri, "--out", "s3://finr1-out/run-1/ingest"],
                       cwd=REPO, env=penv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "tfns: 40 in -> 40 records, 0 quarantined" in r.stdout
    assert f"skipped (not a data file): {uri}/README.txt" in r.stdout
    fs.invalidate_cache()
    out = pq.read_table(fs.open("finr1-out/run-1/ingest/records/tfns.parquet")).to_pylist()
    assert sorted(x["id"] for x in out) == sorted(x["id"] for x in load_source("tfns", str(local)).records)
    written = b"".join(fs.cat_file(p) for p in fs.find("finr1-out/run-1"))
    assert written and env["AWS_SECRET_ACCESS_KEY"].encode() not in written  # credentials are never written
