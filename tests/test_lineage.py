"""`retry-failed --set`: a saved run config fixed with dotted overrides, validated, and recorded in
the run's lineage (local and s3 on moto's server)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from finr1_core.config import REPO_ROOT, ConfigError, load_config
from finr1_core.lineage import amend_run_config, apply_overrides, parse_sets, read_lineage
from finr1_core.storage import Store


def _saved_run(root: str, opts: dict | None) -> Store:
    store = Store(root, "r1", storage_options=opts)
    raw = load_config(REPO_ROOT / "configs" / "embedded.yaml", {"run_id": "r1", "storage_root": root}).public_dict()
    raw["teacher"]["endpoints"] = [{"name": "r1", "base_url": "not a url", "api_key_env": None, "api_key_secret": None}]
    store.write_json(store.uri("config.json"), raw)  # saved before URLs were checked
    return store


def test_parse_and_apply():
    assert parse_sets(["a.b=1", "c=null", "d=http://h:8/v1", "e=[1, 2]", "f="]) == {"a.b": 1, "c": None, "d": "http://h:8/v1", "e": [1, 2], "f": ""}
    new, before = apply_overrides({"a": {"l": [{"x": 1}, {"x": 2}]}}, {"a.l.1.x": 5, "a.y": "n"})
    assert new == {"a": {"l": [{"x": 1}, {"x": 5}], "y": "n"}} and before == {"a.l.1.x": 2, "a.y": "<unset>"}
    for bad, msg in ((["nokey"], "expected KEY=VALUE"), (["a..b=1"], "expected KEY=VALUE")):
        with pytest.raises(ConfigError, match=msg):
            parse_sets(bad)
    with pytest.raises(ConfigError, match=r"--set a.l.7.x: '7' is not an item of a list of 2"):
        apply_overrides({"a": {"l": [{}, {}]}}, {"a.l.7.x": 1})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, moto_s3):
    if request.param == "local":
        return str(tmp_path / "runs"), None
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3)
    if not fs.exists("finr1-lineage"):
        fs.mkdir("finr1-lineage")
    return f"s3://finr1-lineage/{tmp_path.name}", dict(moto_s3)


def test_amend_run_config(root, monkeypatch):
    root, opts = root
    if opts:
        monkeypatch.setenv("AWS_ENDPOINT_URL", opts["endpoint_url"])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", opts["key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", opts["secret"])
    store = _saved_run(root, opts)
    saved = store.read_bytes(store.uri("config.json"))
    for sets, msg in (
        (["teacher.temperature=7"], "config error (after --set teacher.temperature=7): teacher.endpoints.0.base_url: must be an http(s) URL"),
        (["teacher.endpoints.0.base_url=http://h:8000/v1", "teacher.temprature=0.5"], "teacher.temprature: unknown key"),
        (["teacher.endpoints.0.base_url=http://h:8000/v1", "teacher.temperature=7"], "teacher.temperature: Input should be less than or equal to 2 (got 7)"),
        (["run_id=other"], "--set: run_id and storage_root name the run"),
    ):
        with pytest.raises(ConfigError) as e:
            amend_run_config(root, "r1", sets)
        assert msg in str(e.value) and "\n" not in str(e.value)
    assert store.read_bytes(store.uri("config.json")) == saved and read_lineage(store) == []  # nothing changed

    cfg = amend_run_config(root, "r1", ["teacher.endpoints.0.base_url=http://h:8000/v1", "teacher.max_retries=1"])
    assert cfg.teacher.endpoints[0].base_url == "http://h:8000/v1" and cfg.teacher.max_retries == 1
    assert store.read_json(store.uri("config.json"))["teacher"]["endpoints"][0]["base_url"] == "http://h:8000/v1"
    amend_run_config(root, "r1", ["judge.max_tokens=99"], command="test")
    lin = read_lineage(store)
    assert [e["event"] for e in lin] == ["config-override", "config-override"]
    assert lin[0]["set"] == {"teacher.endpoints.0.base_url": "http://h:8000/v1", "teacher.max_retries": 1}
    assert lin[0]["before"] == {"teacher.endpoints.0.base_url": "not a url", "teacher.max_retries": 5}
    assert lin[0]["command"] == "retry-failed" and lin[1]["command"] == "test" and lin[1]["set"] == {"judge.max_tokens": 99}
    assert lin[0]["config_hash_after"] == lin[1]["config_hash_before"] != lin[0]["config_hash_before"]
    with pytest.raises(ConfigError, match="no run 'nope'"):
        amend_run_config(root, "nope", ["a=1"])


def test_cli_retry_failed_rejects_a_bad_set_at_once(tmp_path):
    store = _saved_run(str(tmp_path / "runs"), None)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "retry-failed", "r1", "--storage", store.root, "--set", "teacher.top_p=3"],
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PREFECT_HOME": str(tmp_path / "p")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: config error (after --set teacher.top_p=3): teacher.endpoints.0.base_url: must be an http(s) "
                                              "URL such as http://host:8000/v1 (or null for the managed local server) (got 'not a url') [+1 more]"]
    assert read_lineage(store) == []
