"""The worker pool under stress, on a real local Ray and the fake teacher server: a worker actor
killed mid-shard costs only its requests in flight (the other worker keeps pulling from the shared
queue), the shard reports them, and the re-run sends exactly those."""
from __future__ import annotations

import threading
import time
from collections import Counter

from finr1_core.config import DistillConfig
from finr1_core.distill import DistillShardError, ResponseCache, distill_shard, response_cache_root, worker_pool
from finr1_core.llm import Endpoint
from finr1_core.storage import Store
from tests.fake_openai import FakeOpenAIProcess
from tests.test_distill import fast_role, make_prompts


def test_a_killed_worker_loses_only_its_requests_in_flight(ray_session, tmp_path):
    import ray

    prompts = make_prompts(60, tag="wk")  # x n=2 = 120 keys
    store = Store(str(tmp_path), "run")
    role = fast_role(max_concurrency=8, timeout_s=5.0)  # 4 lanes per worker
    cfg = DistillConfig(num_workers=2)
    cache = ResponseCache(response_cache_root(str(tmp_path)))
    with FakeOpenAIProcess(latency_ms=150, jitter_ms=20) as srv:
        victim = worker_pool(2)[0][0]
        ray.get(victim.ping.remote())
        out: dict = {}

        def run() -> None:
            try:
                out["res"] = distill_shard(store, "part-00000", prompts, role, cfg, [Endpoint("fake", srv.url)], show_progress=False)
            except Exception as e:  # noqa: BLE001 - inspected below
                out["err"] = e

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 60
        while len(cache.keys()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        ray.kill(victim, no_restart=True)
        t.join(120)
        assert not t.is_alive()
        err = out.get("err")
        assert isinstance(err, DistillShardError), out
        r1 = err.result
        assert "worker lost" in str(err) and r1.completed + r1.failed == 120
        assert 0 < r1.failed <= 4  # only the killed worker's lanes in flight, not a chunk of the shard
        cached = cache.keys()
        assert len(cached) == r1.completed
        seq = srv.stats()["seq"]
        r2 = distill_shard(store, "part-00000", prompts, role, cfg, [Endpoint("fake", srv.url)], show_progress=False)
        resent = Counter(e["key"] for e in srv.requests(since=seq))
    rows = store.read_rows("distill")
    assert r2.rows == 120 and len({r["key"] for r in rows}) == 120
    assert set(resent).isdisjoint(cached) and len(resent) == r1.failed and max(resent.values()) == 1
