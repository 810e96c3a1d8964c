"""Fail before work: the config is checked fully at load, the run options before Prefect starts, and
every teacher/judge endpoint is asked for its models (real HTTP against tests/fake_openai.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from finr1_core.config import REPO_ROOT, STAGES, ConfigError, load_config
from finr1_core.preflight import PreflightError, check_endpoints, check_run_options, preflight
from tests.fake_openai import FakeOpenAI


def _load(tmp_path, mutate):
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    mutate(cfg)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return load_config(p)


def _ep(role, **ep):
    return lambda c: c[role].__setitem__("endpoints", [{"name": "e1", **ep}])


@pytest.mark.parametrize("mutate, expected", [
    (_ep("teacher", base_url="not a url"), "config error: teacher.endpoints.0.base_url: must be an http(s) URL such as http://host:8000/v1 (or null for the managed local server) (got 'not a url')"),
    (_ep("judge", base_url="ftp://h/v1"), "config error: judge.endpoints.0.base_url: must be an http(s) URL"),
    (_ep("teacher", base_url="http://h:99999/v1"), "config error: teacher.endpoints.0.base_url: must be an http(s) URL with a valid port"),
    (_ep("teacher", base_url="http://h/v1", api_key_env="sk-live-123"), "config error: teacher.endpoints.0.api_key_env: must be an environment variable name"),
    (lambda c: c["teacher"].__setitem__("endpoints", [{"name": "a", "base_url": "http://x/v1"}, {"name": "a", "base_url": "http://y/v1"}]),
     "config error: teacher.endpoints: endpoint names must be unique (repeated: a)"),
    (lambda c: c["judge"].__setitem__("endpoints", []), "config error: judge.endpoints: needs at least one endpoint"),
    (lambda c: c["teacher"].__setitem__("model", " "), "config error: teacher.model: must not be empty"),
    (lambda c: c["judge"].update(backoff_base_s=5, backoff_max_s=1), "config error: judge: backoff_max_s (1.0) must be >= backoff_base_s (5.0)"),
    (lambda c: c.__setitem__("serve", {"kind": "external"}),
     "config error: teacher.endpoints.0.base_url: required when serve.kind is external (no managed local server)"),
    (lambda c: c["data"]["sources"].append({"name": "finqaa"}), "config error: data.sources.10.name: unknown source 'finqaa' (see `finr1 sources`)"),
    (lambda c: c["data"]["sources"].append({"name": "finqa"}), "config error: data.sources.10.name: source 'finqa' is listed twice"),
    (lambda c: c.__setitem__("storage_root", "s3://"), "config error: storage_root: s3:// needs a bucket"),
    (lambda c: c.__setitem__("storage_root", "nosuch://b/p"), "config error: storage_root: unknown storage protocol 'nosuch'"),
    (lambda c: c.__setitem__("run_id", "../other"), "config error: run_id: must be 1-128 characters"),
])
def test_config_is_checked_fully_at_load(tmp_path, mutate, expected):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, mutate)
    assert "\n" not in str(e.value) and str(e.value).startswith(expected), str(e.value)


def test_good_urls_and_shipped_configs_pass(tmp_path):
    c = _load(tmp_path, _ep("teacher", base_url=" https://api.example.com:8443/v1 ", api_key_env="FINR1_TEACHER_API_KEY"))
    assert c.teacher.endpoints[0].base_url == "https://api.example.com:8443/v1"
    assert load_config(REPO_ROOT / "configs" / "production.yaml").serve.kind == "external"


@pytest.mark.parametrize("kw, expected", [
    (dict(stop_after="bogus"), f"--stop-after: unknown stage 'bogus' (one of: {', '.join(STAGES)})"),
    (dict(start="score", stop_after="prompts"), "--stop-after: 'prompts' comes before --start 'score'"),
    (dict(limit=0), "--limit: must be >= 1 (got 0)"),
    (dict(run_id="a b"), "--run-id: must be 1-128 characters"),
])
def test_run_options(kw, expected):
    with pytest.raises(ConfigError) as e:
        check_run_options(**kw)
    assert str(e.value).startswith(expected)
    check_run_options(stop_after="score", limit=4, run_id="r-1.x", start="ingest")


def test_cli_rejects_bad_stop_after_before_prefect(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--stop-after", "bogus", "--storage", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(tmp_path / "prefect")})
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --stop-after: unknown stage 'bogus'"), r.stderr[-2000:]
    assert time.monotonic() - t0 < 10 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["run", "retry-failed"])
def test_stop_after_help_lists_every_stage(command):
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "--stop-after" in ln)
    assert f"one of: {', '.join(STAGES)}" in line, line
    assert STAGES[0] == "ingest" and STAGES[-1] == "report"


# ------------------------------------------------------------------ endpoints
def _cfg(tmp_path, teacher_url, judge_url, teacher_model="fake-teacher", judge_model="fake-judge", key_env=None):
    def m(c):
        c["serve"] = {"kind": "external"}
        c["teacher"].update(model=teacher_model, endpoints=[{"name": "r1", "base_url": teacher_url, "api_key_env": key_env}])
        c["judge"].update(model=judge_model, endpoints=[{"name": "j", "base_url": judge_url, "api_key_env": key_env}])
    return _load(tmp_path, m)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_preflight_ok_against_the_fake_server(tmp_path):
    with FakeOpenAI() as srv:
        checks = preflight(_cfg(tmp_path, srv.url, srv.url))
        assert [(c.role, c.endpoint, c.ok, c.detail) for c in checks] == [
            ("teacher", "r1", True, "serves 'fake-teacher'"), ("judge", "j", True, "serves 'fake-judge'")]
        assert srv.requests() == []  # no completion was asked for


def test_preflight_names_role_endpoint_and_problem(tmp_path):
    port = _closed_port()
    with FakeOpenAI(models=["other-model"]) as srv:
        cfg = _cfg(tmp_path, srv.url, f"http://127.0.0.1:{port}/v1")
        t0 = time.monotonic()
        with pytest.raises(PreflightError) as e:
            preflight(cfg, timeout_s=3)
        assert time.monotonic() - t0 < 5
    assert str(e.value) == f"preflight: teacher endpoint 'r1' ({srv.url}): model 'fake-teacher' is not served (serves: other-model); fix teacher.model [+1 more]"
    assert e.value.failures[1].startswith(f"preflight: judge endpoint 'j' (http://127.0.0.1:{port}/v1): cannot connect (")
    assert all("\n" not in f for f in e.value.failures)


def test_preflight_wrong_path_key_and_silence(tmp_path, monkeypatch):
    with FakeOpenAI(api_key="s3cret") as srv:
        base = srv.url.removesuffix("/v1")
        checks = check_endpoints(_cfg(tmp_path, base, srv.url, key_env="FINR1_TEST_KEY"))  # base_url missing /v1, and no key
        assert "HTTP 404 on GET " + base + "/models" in checks[0].detail
        assert checks[1].detail.startswith("HTTP 401") and "api_key_env" in checks[1].detail
        monkeypatch.setenv("FINR1_TEST_KEY", "s3cret")
        assert [c.ok for c in check_endpoints(_cfg(tmp_path, srv.url, srv.url, key_env="FINR1_TEST_KEY"))] == [True, True]
    # a server that accepts the connection and never answers
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    held: list = []
    stop = threading.Event()

    def accept():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(lsock.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{lsock.getsockname()[1]}/v1"
        t0 = time.monotonic()
        with pytest.raises(PreflightError, match=r"teacher endpoint 'r1' .*: no answer within 1s"):
            preflight(_cfg(tmp_path, url, url), timeout_s=1)
        assert time.monotonic() - t0 < 4  # both endpoints are asked at once
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        lsock.close()


def test_managed_endpoints_are_skipped_unless_a_url_is_given(tmp_path):
    cfg = _load(tmp_path, lambda c: None)  # embedded: teacher and judge on the managed local server
    assert preflight(cfg) == []
    with FakeOpenAI(models=[cfg.teacher.model]) as srv:
        checks = check_endpoints(cfg, base_url=srv.url)
    assert [c.role for c in checks] == ["teacher", "judge"] and checks[0].ok
    assert checks[1].ok == (cfg.judge.model == cfg.teacher.model)
