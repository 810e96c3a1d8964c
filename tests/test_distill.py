"""Distillation engine: keys, parsing, the forced prefix on the wire, exactly-once under
faults, kill -9 and resume, an s3:// storage root on moto's server, and the embedded teacher.

Everything runs against real servers: our fault-injecting OpenAI-compatible server
(``tests/fake_openai.py``, a subprocess so Ray workers can reach it), ``moto_server`` and
``transformers serve``. Figures are printed (``pytest -s``) and appended to
``$FINR1_TEST_FIGURES`` when that variable names a file.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from finr1_core.config import DistillConfig, LLMRole, embedded_model_dir
from finr1_core.distill import (
    DistillShardError,
    ResponseCache,
    distill_shard,
    parse_trace,
    request_key,
    response_cache_root,
)
from finr1_core.llm import Endpoint
from finr1_core.storage import Store
from tests.fake_openai import FakeOpenAIProcess

REPO = Path(__file__).resolve().parent.parent
PREFIX = "<think>\n"


def make_prompts(n: int, tag: str = "q") -> list[dict]:
    out = []
    for i in range(n):
        q = f"[{tag}{i}] Revenue rose from {100 + i} to {150 + 2 * i} million. What is the growth rate?"
        out.append(
            {
                "record_id": f"{tag}-{i:05d}",
                "repo_name": "finr1/tests",
                "messages": [{"role": "user", "content": q + " Please reason step by step, and put your final answer within \\boxed{}."}],
                "prefix": PREFIX,
                "prompt_template_version": "test-v1",
                "prompt_hash": f"ph-{tag}-{i}",
                "question": q,
                "answer": str(50 + i),
                "answer_type": "number",
                "module": "test",
            }
        )
    return out


def fast_role(mode: str = "chat-prefill", **kw) -> LLMRole:
    base = dict(model="fake-teacher", mode=mode, n=2, max_tokens=256, max_concurrency=32, timeout_s=1.0, max_retries=12, backoff_base_s=0.02, backoff_max_s=0.3)
    base.update(kw)
    return LLMRole(**base)


def figures(name: str, **kw) -> None:
    line = json.dumps({"test": name, **kw})
    print("\nFIGURES", line)
    if os.environ.get("FINR1_TEST_FIGURES"):
        with open(os.environ["FINR1_TEST_FIGURES"], "a") as f:
            f.write(line + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# =========================================================================== pure functions
def test_request_key_is_stable_and_sensitive():
    s = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64}
    k = request_key("r1", "prompt", "m", s, 0)
    assert k == request_key("r1", "prompt", "m", dict(reversed(list(s.items()))), 0)  # order-free
    assert len(k) == 64 and int(k, 16) >= 0
    variants = [
        request_key("r2", "prompt", "m", s, 0),
        request_key("r1", "prompt!", "m", s, 0),
        request_key("r1", "prompt", "m2", s, 0),
        request_key("r1", "prompt", "m", {**s, "temperature": 0.7}, 0),
        request_key("r1", "prompt", "m", s, 1),
    ]
    assert len(set(variants + [k])) == 6


def test_parse_trace_flags():
    ok = parse_trace("Step 1: 2+3=5.\n</think>\n\nThe answer is \\boxed{5}.", PREFIX, "stop")
    assert ok == {"reasoning": "Step 1: 2+3=5.", "answer": "The answer is \\boxed{5}.", "truncated": False, "no_think_close": False, "empty": False}
    cut = parse_trace("Step 1: 2+3", PREFIX, "length")
    assert cut["truncated"] and cut["no_think_close"] and not cut["empty"]
    assert cut["reasoning"] == "Step 1: 2+3" and cut["answer"] == ""
    empty = parse_trace("", PREFIX, "stop")
    assert empty["empty"] and empty["no_think_close"] and empty["reasoning"] == "" and empty["answer"] == ""
    # the model repeated the opening tag itself: not doubled
    rep = parse_trace("<think>\nA.\n</think>\nB", PREFIX, "stop")
    assert rep["reasoning"] == "A." and rep["answer"] == "B" and not rep["no_think_close"]
    # plain chat with no think block at all: everything is the answer, flagged
    plain = parse_trace("The answer is 5.", "", "stop")
    assert plain["answer"] == "The answer is 5." and plain["reasoning"] == "" and plain["no_think_close"]


def test_response_cache_roundtrip_and_layout(tmp_path):
    root = response_cache_root(str(tmp_path))
    assert response_cache_root(root) == root
    c = ResponseCache(root)
    k = request_key("r", "p", "m", {}, 0)
    c.put({"key": k, "text": "hello"})
    assert (tmp_path / "_cache" / "responses" / k[:2] / f"{k}.json").exists()
    other = request_key("r", "p", "m", {}, 1)
    assert c.get_many([k, other]) == {k: {"key": k, "text": "hello"}}
    # a record stored under the wrong name is ignored, not trusted
    (tmp_path / "_cache" / "responses" / other[:2]).mkdir(exist_ok=True)
    (tmp_path / "_cache" / "responses" / other[:2] / f"{other}.json").write_text(json.dumps({"key": k, "text": "x"}))
    assert other not in c.get_many([other])


# =========================================================================== the prefix on the wire
def _tokenizer_dir() -> str | None:
    d = embedded_model_dir()
    return str(d) if (d / "tokenizer_config.json").exists() else None


@pytest.mark.parametrize("mode", ["completions", "chat-prefill", "chat"])
def test_prefix_in_what_the_server_received(ray_session, tmp_path, mode):
    tok = _tokenizer_dir()
    if mode == "completions" and tok is None:
        pytest.skip(f"completions mode renders the teacher's chat template locally; no tokenizer at {embedded_model_dir()} (run `finr1 prepare-model`)")
    prompts = make_prompts(3, tag=mode)
    store = Store(str(tmp_path), "run")
    with FakeOpenAIProcess() as srv:
        res = distill_shard(store, "part-00000", prompts, fast_role(mode, n=1, tokenizer=tok), DistillConfig(num_workers=2), [Endpoint("fake", srv.url)])
        got = srv.requests()
    assert res.rows == 3 and len(got) == 3
    rows = store.read_rows("distill")
    for r in got:
        if mode == "completions":
            assert r["path"] == "/v1/completions"
            # the teacher's own template, no system turn (the template's default one is removed),
            # and the assistant turn opened with the forced prefix
            assert r["prompt"].endswith("<|im_start|>assistant\n<think>\n"), r["prompt"][-80:]
            assert "<|im_start|>system" not in r["prompt"]
            assert "<|im_start|>user\n[completions" in r["prompt"]
        else:
            msgs = json.loads(r["prompt"])
            assert r["path"] == "/v1/chat/completions"
            assert all(m["role"] != "system" for m in msgs)
            if mode == "chat-prefill":
                assert msgs[-1] == {"role": "assistant", "content": "<think>\n"}
                assert r["continue_final_message"] is True and r["add_generation_prompt"] is False
            else:
                assert msgs[-1]["role"] == "user" and r["continue_final_message"] is None
    for row in rows:
        assert row["text"].startswith("<think>\n") and "\\boxed{" in row["answer"]
        assert not (row["truncated"] or row["no_think_close"] or row["empty"])
        assert row["mode"] == mode and row["endpoint"] == "fake" and row["teacher_model"] == "fake-teacher"


# =========================================================================== exactly once under faults
def test_faults_every_key_exactly_once_and_never_paid_twice(ray_session, tmp_path):
    prompts = make_prompts(200, tag="f")  # x n=2 = 400 keys
    store = Store(str(tmp_path), "run")
    # 30 % faults spread over 429, 500, hang, empty body, truncated, malformed JSON
    with FakeOpenAIProcess(fault_rate=0.30, hang_s=5.0, latency_ms=15, jitter_ms=10, seed=7) as srv:
        eps = [Endpoint("a", srv.url, api_key="sk-test-never-logged-123456"), Endpoint("b", srv.url)]
        t = time.monotonic()
        # the client's timeout is for the 5 s hangs: a good answer that is merely slow must still arrive in
        # time (make test runs two workers on two cores; good answers arrived after 0.6 s, then after 1.5 s,
        # and were paid again)
        res = distill_shard(store, "part-00000", prompts, fast_role(timeout_s=3.5), DistillConfig(num_workers=2), eps)
        wall = time.monotonic() - t
        st = srv.stats()
    rows = store.read_rows("distill")
    keys = [r["key"] for r in rows]
    served = Counter(st["served_ok"])
    n_req, n_faults = st["requests"], sum(st["faults"].values())
    figures(
        "faults",
        keys=res.requests,
        http_requests=n_req,
        faults_injected=n_faults,
        fault_share=round(n_faults / n_req, 3),
        faults_by_kind=st["faults"],
        rows=len(rows),
        rows_lost=res.requests - len(set(keys)),
        rows_duplicated=len(keys) - len(set(keys)),
        paid_twice=sum(1 for v in served.values() if v > 1),
        truncated_rows=res.flags["truncated"],
        wall_s=round(wall, 2),
    )
    assert n_faults / n_req >= 0.2
    assert len(keys) == len(set(keys)) == res.requests == 400
    # every key was billed exactly once: faults never produce a billable response
    assert set(served) == set(keys) and max(served.values()) == 1
    # truncated outputs are kept and labelled, never dropped
    assert res.flags["truncated"] == sum(r["truncated"] for r in rows) > 0
    assert all(r["no_think_close"] for r in rows if r["truncated"])
    assert sum(r["attempts"] for r in rows) > len(rows)  # retries really happened
    # the API key never reaches the data
    blob = json.dumps(rows) + json.dumps(store.shards("distill"))
    assert "sk-test-never-logged" not in blob


def test_failed_requests_raise_after_caching_and_rerun_sends_only_those(ray_session, tmp_path):
    prompts = make_prompts(40, tag="x")  # 80 keys
    store = Store(str(tmp_path), "run")
    role = fast_role(max_retries=0)
    with FakeOpenAIProcess(rate_500=0.5, seed=3) as srv:
        with pytest.raises(DistillShardError) as ei:
            distill_shard(store, "part-00000", prompts, role, DistillConfig(num_workers=2), [Endpoint("a", srv.url)])
        r1 = ei.value.result
        assert r1.failed > 0 and r1.completed + r1.failed == 80 and "HTTP 500" in str(ei.value)
        assert not store.shard_committed("distill", "part-00000")  # nothing partial is committed
        cached = ResponseCache(response_cache_root(str(tmp_path))).keys()
        assert len(cached) == r1.completed
        seq = srv.stats()["seq"]
        srv.configure(rate_500=0.0)
        r2 = distill_shard(store, "part-00000", prompts, role, DistillConfig(num_workers=2), [Endpoint("a", srv.url)])
        resent = {e["key"] for e in srv.requests(since=seq)}
    assert r2.cached == r1.completed and r2.requested == r1.failed and r2.rows == 80
    assert resent.isdisjoint(cached) and len(resent) == r1.failed
    figures("failed-shard", keys=80, failed_first_run=r1.failed, resent_on_rerun=len(resent), rows=r2.rows)


# =========================================================================== kill -9 and resume
CHILD = """
import json, sys
from finr1_core.config import DistillConfig
from finr1_core.distill import distill_shard, ray_init
from finr1_core.llm import Endpoint
from finr1_core.storage import Store
from tests.test_distill import make_prompts, fast_role
a = json.loads(sys.argv[1])
ray_init(address=a["ray"])
store = Store(a["root"], "run")
prompts = make_prompts(a["n_prompts"], tag="k")
per = a["n_prompts"] // a["shards"]
for s in range(a["shards"]):
    distill_shard(store, f"part-{s:05d}", prompts[s * per:(s + 1) * per], fast_role(max_concurrency=16),
                  DistillConfig(num_workers=2, ray_address=a["ray"]), [Endpoint("fake", a["url"])], show_progress=False)
print("DONE", flush=True)
"""


def _run_child(args: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _quiet(srv: FakeOpenAIProcess, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until the server has seen no request for ``quiet_s`` (the killed run's workers are gone)."""
    last, t_last, t0 = srv.stats()["seq"], time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.2)
        s = srv.stats()["seq"]
        if s != last:
            last, t_last = s, time.monotonic()
        elif time.monotonic() - t_last >= quiet_s:
            return


def test_kill9_at_random_points_then_resume(ray_session, tmp_path):
    rng = random.Random(int(os.environ.get("FINR1_KILL_SEED", "1234")))
    n_prompts, shards = 240, 3  # 480 keys in 3 shards
    total = n_prompts * 2
    root = str(tmp_path / "killed")
    cache_dir = Path(response_cache_root(root))
    kills = []
    with FakeOpenAIProcess(latency_ms=40, jitter_ms=20, rate_429=0.05, rate_500=0.05, seed=11) as srv:
        args = {"ray": ray_session, "root": root, "url": srv.url, "n_prompts": n_prompts, "shards": shards}
        repaid_completed = 0
        for kill_no in range(4):
            cached_before = {p.stem for p in cache_dir.rglob("*.json")} if cache_dir.exists() else set()
            target = min(total - 1, len(cached_before) + rng.randint(20, 140))
            seq0 = srv.stats()["seq"]
            child = _run_child(args)
            t0 = time.monotonic()
            mode = "time" if kill_no == 0 else "progress"  # the first kill lands at a random moment of start-up
            delay = rng.uniform(0.5, 3.0)
            while child.poll() is None:
                n = sum(1 for _ in cache_dir.rglob("*.json")) if cache_dir.exists() else 0
                if (mode == "time" and time.monotonic() - t0 >= delay) or (mode == "progress" and n >= target):
                    break
                time.sleep(0.02)
            assert child.poll() is None, f"child ended before the kill: {child.communicate()}"
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close(), child.stderr.close()
            _quiet(srv)
            resent = {e["key"] for e in srv.requests(since=seq0)}
            repaid_completed += len(resent & cached_before)
            cached_after = {p.stem for p in cache_dir.rglob("*.json")}
            kills.append({"at": mode, "cached_before": len(cached_before), "cached_after": len(cached_after), "sent": len(resent)})
        # resume to the end
        cached_before = {p.stem for p in cache_dir.rglob("*.json")}
        seq0 = srv.stats()["seq"]
        child = _run_child(args)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and "DONE" in out, err[-3000:]
        resent = {e["key"] for e in srv.requests(since=seq0)}
        repaid_completed += len(resent & cached_before)
        served = Counter(srv.stats()["served_ok"])
        # a clean run of the same prompts, for comparison
        clean_root = str(tmp_path / "clean")
        clean_store = Store(clean_root, "run")
        prompts = make_prompts(n_prompts, tag="k")
        per = n_prompts // shards
        for s in range(shards):
            distill_shard(clean_store, f"part-{s:05d}", prompts[s * per:(s + 1) * per], fast_role(max_concurrency=16), DistillConfig(num_workers=2), [Endpoint("fake", srv.url)])
    rows = Store(root, "run").read_rows("distill")
    clean = clean_store.read_rows("distill")
    keys = [r["key"] for r in rows]
    paid_twice = sum(1 for k, v in served.items() if v > 1 and k in set(keys))
    figures(
        "kill9-resume",
        keys=total,
        kills=kills,
        final_rows=len(rows),
        rows_lost=len({r["key"] for r in clean} - set(keys)),
        rows_duplicated=len(keys) - len(set(keys)),
        completed_requests_resent=repaid_completed,
        paid_twice_in_flight_at_kill=paid_twice,
        resume_sent=len(resent),
    )
    assert len(keys) == len(set(keys)) == total
    assert {(r["key"], r["text"]) for r in rows} == {(r["key"], r["text"]) for r in clean}
    assert repaid_completed == 0  # a completed (cached) response is never requested again
    assert paid_twice <= 4 * 16  # only requests in flight at a kill can be paid twice
    assert len(Store(root, "run").shards("distill")) == shards


# =========================================================================== s3:// on moto
@pytest.fixture()
def moto_s3():
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    try:
        yield {"key": "testing", "secret": "testing", "endpoint_url": url}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_s3_storage_root_on_moto(ray_session, moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3)
    fs.mkdir("finr1-test")
    root = "s3://finr1-test/pipeline"
    store = Store(root, "run", storage_options=moto_s3)
    prompts = make_prompts(30, tag="s3")
    with FakeOpenAIProcess(fault_rate=0.2, hang_s=2.0, latency_ms=10, seed=5) as srv:
        res = distill_shard(store, "part-00000", prompts, fast_role(), DistillConfig(num_workers=2), [Endpoint("fake", srv.url)])
        assert res.rows == 60
        cache = ResponseCache(response_cache_root(root), moto_s3)
        assert len(cache.keys()) == 60
        assert fs.exists("finr1-test/pipeline/run/distill/part-00000.parquet")
        # a crash between the last response and the commit: the re-run pays for nothing
        fs.rm("finr1-test/pipeline/run/distill/_shards/part-00000.json")
        seq = srv.stats()["seq"]
        res2 = distill_shard(store, "part-00000", prompts, fast_role(), DistillConfig(num_workers=2), [Endpoint("fake", srv.url)])
        assert res2.cached == 60 and res2.requested == 0 and srv.stats()["seq"] == seq
        res3 = distill_shard(store, "part-00000", prompts, fast_role(), DistillConfig(num_workers=2), [Endpoint("fake", srv.url)])
        assert res3.skipped
    rows = Store(root, "run", storage_options=moto_s3).read_rows("distill")
    assert len({r["key"] for r in rows}) == 60


# =========================================================================== the embedded teacher
def test_embedded_transformers_serve_teacher(ray_session, tmp_path):
    model = embedded_model_dir()
    if not (model / "config.json").exists():
        pytest.skip(f"embedded model not prepared at {model} (run `finr1 prepare-model`)")
    from finr1_core.serving import ManagedServer

    prompts = make_prompts(3, tag="e")
    role = LLMRole(model=str(model), mode="completions", n=1, max_tokens=16, max_concurrency=4, timeout_s=120, max_retries=2, price_per_m_input=1.0, price_per_m_output=2.0)
    store = Store(str(tmp_path), "run")
    seen = []
    # no continuous batching here: on CPU its paged KV cache takes ~11 GB of RAM (measured), and
    # two such servers at once (other tests, the demo) got the kernel OOM killer involved
    with ManagedServer(str(model), continuous_batching=False) as srv:
        res = distill_shard(store, "part-00000", prompts, role, DistillConfig(num_workers=1), [Endpoint("local", srv.base_url)], progress_cb=lambda *a: seen.append(a))
    rows = store.read_rows("distill")
    assert res.rows == 3 and len({r["key"] for r in rows}) == 3
    assert res.completion_tokens > 0 and res.prompt_tokens > 0
    assert res.cost_usd == pytest.approx(res.prompt_tokens / 1e6 * 1.0 + res.completion_tokens / 1e6 * 2.0)
    assert store.shards("distill")[0]["extra"]["cost_usd"] == pytest.approx(res.cost_usd)
    for r in rows:
        assert r["text"].startswith("<think>\n") and len(r["text"]) > len("<think>\n")
        assert r["finish_reason"] in ("stop", "length") and r["completion_tokens"] > 0
    assert seen and seen[-1][0] == 3 and seen[-1][1] == 3


# =========================================================================== the client alone
def test_client_ejects_a_dead_endpoint_and_respects_rpm():

    from finr1_core.llm import LLMClient, Sampling
    from tests.fake_openai import FakeOpenAI

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    with FakeOpenAI(latency_ms=5) as srv:
        c = LLMClient([Endpoint("dead", dead, api_key="sk-secret-abcdef123"), Endpoint("live", srv.url)], "m", mode="chat",
                      max_concurrency=8, timeout_s=2, max_retries=8, backoff_base_s=0.01, backoff_max_s=0.05, breaker_threshold=3, breaker_cooldown_s=60)
        assert "sk-secret" not in repr(c) and "sk-secret" not in repr(c.endpoints)
        out = c.complete_many([([{"role": "user", "content": f"q{i}"}], Sampling(max_tokens=64), "") for i in range(60)])
        assert all(not isinstance(o, Exception) for o in out), [o for o in out if isinstance(o, Exception)][:2]
        st = c.endpoint_stats()
        assert st["dead"]["ejections"] >= 1 and st["dead"]["ok"] == 0 and st["live"]["ok"] == 60
        assert st["dead"]["failed"] <= 8 + 3  # ejected after a handful, not hammered 60 times
        # requests per minute: 60 rpm = a burst of 10 then one per second
        c2 = LLMClient([Endpoint("live", srv.url)], "m", mode="chat", rpm=60, max_concurrency=16)
        t = time.monotonic()
        out = c2.complete_many([([{"role": "user", "content": f"r{i}"}], Sampling(max_tokens=16), "") for i in range(12)])
        dt = time.monotonic() - t
        assert all(not isinstance(o, Exception) for o in out)
        assert 1.8 <= dt < 6, dt
