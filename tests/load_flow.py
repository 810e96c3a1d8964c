"""A small flow for the Prefect load test: ``n`` mapped shards, each a short task."""
from __future__ import annotations

import time

from prefect import flow, task


@task(name="load-shard")
def shard(i: int) -> int:
    time.sleep(0.05)
    return i * i


@flow(name="finr1-load")
def load_flow(n: int = 50) -> int:
    futures = shard.map(range(n))
    return sum(f.result() for f in futures)
