"""A fresh PostgreSQL database per test session, dropped afterwards.

The server is ``$FINR1_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432``, trust auth; a
password in the URL is passed as ``PGPASSWORD``), reached with the client tools ``createdb``, ``psql``
and ``dropdb``. When they are missing or the server does not answer (within ``PGCONNECT_TIMEOUT``,
5 s), the test fails with one line saying so, never a traceback or a hang.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote, unquote, urlsplit

import pytest

URL_ENV = "FINR1_TEST_PG_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432"
TOOLS = ("createdb", "psql", "dropdb")


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str | None
    shown: str  # the URL without its password, for messages

    def env(self) -> dict[str, str]:
        """libpq's environment for the client tools (the password never goes on a command line)."""
        env = {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user}
        env.setdefault("PGCONNECT_TIMEOUT", "5")
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def sqlalchemy_url(self, db: str) -> str:
        auth = self.user + (f":{quote(self.password, safe='')}" if self.password is not None else "")
        return f"postgresql+asyncpg://{auth}@{self.host}:{self.port}/{db}"


def unavailable(shown: str, reason: str) -> None:
    """Fail the test in one line (no traceback): what is wrong and how to point the tests elsewhere."""
    pytest.fail(f"PostgreSQL for the tests ({shown}, from ${URL_ENV}): {reason}. Start one with trust auth, or set "
                f"{URL_ENV}=postgresql://USER[:PASSWORD]@HOST:PORT (README, 'Two commands')", pytrace=False)


def pg_server(url: str | None = None) -> PgServer:
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    u = urlsplit(url)
    shown = f"{u.scheme}://{u.username + '@' if u.username else ''}{u.hostname or ''}{':' + str(u.port) if u.port else ''}"
    if u.scheme not in ("postgresql", "postgres") or not u.hostname:
        unavailable(shown or url.split("@")[-1], "not a postgresql://[USER@]HOST[:PORT] URL")
    return PgServer(u.hostname, u.port or 5432, unquote(u.username or "postgres"),
                    unquote(u.password) if u.password is not None else None, shown)


def _run(srv: PgServer, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        unavailable(srv.shown, f"the client tools {', '.join(missing)} are not on PATH (Debian: apt-get install postgresql-client)")
    try:
        return subprocess.run(cmd, env=srv.env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        unavailable(srv.shown, f"`{cmd[0]}` got no answer within {timeout:.0f} s")
        raise  # unreachable: pytest.fail raises


@contextmanager
def fresh_database(prefix: str = "finr1_test", url: str | None = None) -> Iterator[tuple[str, str]]:
    """Yields (PREFECT_API_DATABASE_CONNECTION_URL, database name)."""
    srv = pg_server(url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    p = _run(srv, ["createdb", name])
    if p.returncode != 0:
        first = next((ln.strip() for ln in p.stderr.splitlines() if ln.strip()), f"createdb exited {p.returncode}")
        unavailable(srv.shown, first)
    try:
        yield srv.sqlalchemy_url(name), name
    finally:
        _run(srv, ["dropdb", "--force", "--if-exists", name], timeout=120)


def psql(db: str, sql: str, url: str | None = None) -> str:
    srv = pg_server(url)
    p = _run(srv, ["psql", "-d", db, "-tAc", sql])
    if p.returncode != 0:
        raise AssertionError(f"psql -d {db} -c {sql!r} failed: {p.stderr.strip()}")
    return p.stdout.strip()
