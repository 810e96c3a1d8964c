"""A fresh PostgreSQL database per test session (127.0.0.1:5432, trust auth), dropped afterwards."""
from __future__ import annotations

import subprocess
import uuid
from contextlib import contextmanager
from typing import Iterator

HOST, USER = "127.0.0.1", "postgres"


@contextmanager
def fresh_database(prefix: str = "finr1_test") -> Iterator[tuple[str, str]]:
    """Yields (PREFECT_API_DATABASE_CONNECTION_URL, database name)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    subprocess.run(["createdb", "-h", HOST, "-U", USER, name], check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql+asyncpg://{USER}@{HOST}:5432/{name}", name
    finally:
        subprocess.run(["dropdb", "-h", HOST, "-U", USER, "--force", "--if-exists", name], capture_output=True, timeout=120)


def psql(db: str, sql: str) -> str:
    return subprocess.run(["psql", "-h", HOST, "-U", USER, "-d", db, "-tAc", sql], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
