"""The tests' PostgreSQL (tests/pg.py): a working server gives a fresh database that is dropped
afterwards; a missing or silent one fails the test in one line, without a traceback or a hang."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.pg import URL_ENV, fresh_database, psql

REPO = Path(__file__).resolve().parent.parent


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fresh_database_is_created_and_dropped():
    with fresh_database("finr1_pgcheck") as (url, db):
        assert url.startswith("postgresql+asyncpg://") and url.endswith(f"/{db}")
        assert psql(db, "select current_database()") == db
    assert psql("postgres", f"select count(*) from pg_database where datname = '{db}'") == "0"


def test_unreachable_postgres_fails_in_one_line(tmp_path):
    """A pytest run whose PostgreSQL URL points at a closed port: one clear line, no traceback."""
    port = _unused_port()
    (tmp_path / "test_needs_pg.py").write_text(textwrap.dedent("""
        from tests.pg import fresh_database

        def test_it():
            with fresh_database() as (url, db):
                pass
    """))
    env = {**os.environ, URL_ENV: f"postgresql://postgres@127.0.0.1:{port}", "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(tmp_path / "test_needs_pg.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and time.monotonic() - t0 < 60, out
    assert "Traceback" not in out and "CalledProcessError" not in out and "tests/pg.py" not in out, out
    lines = [ln for ln in out.splitlines() if f"127.0.0.1:{port}" in ln]
    # pytest shows the reason once in the failure section and once in the short summary
    assert lines and all(f"PostgreSQL for the tests (postgresql://postgres@127.0.0.1:{port}, from ${URL_ENV})" in ln
                         and "Connection refused" in ln and f"set {URL_ENV}=" in ln for ln in lines), out


def test_silent_server_fails_within_the_connect_timeout(monkeypatch):
    """A port that accepts connections but never answers: one line within PGCONNECT_TIMEOUT, not a hang."""
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        url = f"postgresql://tester:s3cret@127.0.0.1:{port}"
        t0 = time.monotonic()
        with pytest.raises(pytest.fail.Exception) as e:
            with fresh_database(url=url):
                pass
        took = time.monotonic() - t0
    msg = str(e.value)
    assert took < 30 and "\n" not in msg, (took, msg)
    assert msg.startswith(f"PostgreSQL for the tests (postgresql://tester@127.0.0.1:{port}") and "timeout" in msg, msg
    assert "s3cret" not in msg


def test_bad_url_fails_in_one_line():
    with pytest.raises(pytest.fail.Exception) as e:
        with fresh_database(url="mysql://127.0.0.1:3306"):
            pass
    assert str(e.value).startswith("PostgreSQL for the tests (mysql://127.0.0.1:3306") and "not a postgresql://" in str(e.value)
