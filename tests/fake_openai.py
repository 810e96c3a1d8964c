"""A fault-injecting OpenAI-compatible server of our own, for reliability tests and benchmarks.

A real HTTP/1.1 server (``http.server.ThreadingHTTPServer``, keep-alive) on 127.0.0.1:

- ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``;
- deterministic, seeded responses: a reasoning part, ``</think>`` and a ``\\boxed{}`` answer. When
  the prompt already ends with ``<think>\\n`` (forced prefix) the continuation does not repeat it;
  otherwise (plain chat) the response opens its own think block. ``max_tokens`` (words) is honoured
  with ``finish_reason: length``;
- faults at configurable rates, drawn from a seeded RNG: ``429`` (with ``Retry-After: 0``),
  ``500``, ``hang`` (sleeps ``hang_s`` then drops the connection with no response), ``empty``
  (200 with an empty body), ``truncated`` (valid response cut short, ``finish_reason: length``),
  ``malformed`` (200 with broken JSON); latency ``latency_ms`` ± ``jitter_ms``; stragglers: a
  ``slow_rate`` share of prompts (chosen by a hash of the prompt text, so the same prompts are
  slow for every client) take ``slow_factor`` times the latency;
- ``GET /v1/models`` lists ``models`` (default ``fake-teacher`` and ``fake-judge``; ``--models a,b``);
  with ``api_key`` set, every ``/v1/...`` request needs ``Authorization: Bearer <api_key>`` (else 401);
- it records every request: ``GET /_requests?since=N`` returns them (sequence number, path, the
  prompt text exactly as received, the request key header, fault, status), ``GET /_stats``
  returns counts, including ``served_ok`` per request key (a complete, valid 200 response: what a
  real API bills), ``POST /_config`` changes rates at run time, ``POST /_reset`` clears the log.
  With ``--log FILE`` every request is also appended to a JSONL file.

In-process::

    with FakeOpenAI(fault_rate=0.2) as srv:   # a thread
        srv.url  # http://127.0.0.1:PORT/v1

As a subprocess (reachable from Ray workers in other processes)::

    python -m tests.fake_openai --port 0 --latency-ms 200 --jitter-ms 50 --fault-rate 0.2
    # prints "READY <port>" on stdout

or :class:`FakeOpenAIProcess`, which does that and talks to the control endpoints.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

KEY_HEADER = "X-Finr1-Request-Key"
FAULTS = ("429", "500", "hang", "empty", "truncated", "malformed")
PREFIX = "<think>\n"


def fake_completion(prompt: str, model: str, seed: int) -> tuple[str, str]:
    """(reasoning, answer) chosen deterministically from the prompt text, the model and the seed."""
    h = hashlib.sha256(f"{seed}|{model}|{prompt}".encode()).hexdigest()
    a, b = int(h[:4], 16) % 97 + 3, int(h[4:8], 16) % 89 + 2
    reasoning = (
        f"We need the result for case {h[:8]}. First take {a} and {b}. "
        f"Multiplying gives {a} times {b} equals {a * b}. Check: {a * b} divided by {b} is {a}. "
        f"So the final value is {a * b}."
    )
    answer = f"The answer is \\boxed{{{a * b}}}."
    return reasoning, answer


class _Config:
    def __init__(self, **kw):
        self.seed = 0
        self.latency_ms = 0.0
        self.jitter_ms = 0.0
        self.hang_s = 5.0
        self.models = ["fake-teacher", "fake-judge"]
        self.api_key: str | None = None
        self.slow_rate = 0.0
        self.slow_factor = 10.0
        self.rates = {f: 0.0 for f in FAULTS}
        self.update(**kw)

    def update(self, fault_rate: float | None = None, **kw) -> None:
        if fault_rate is not None:  # spread evenly over every fault kind
            for f in FAULTS:
                self.rates[f] = fault_rate / len(FAULTS)
        for k, v in kw.items():
            if v is None:
                continue
            if k in self.rates:
                self.rates[k] = float(v)
            elif k.startswith("rate_") and k[5:] in self.rates:
                self.rates[k[5:]] = float(v)
            elif k == "models":
                self.models = [m for m in (v.split(",") if isinstance(v, str) else list(v)) if m]
            elif k == "api_key":
                self.api_key = str(v) or None
            elif k in ("seed", "latency_ms", "jitter_ms", "hang_s", "slow_rate", "slow_factor"):
                setattr(self, k, type(getattr(self, k))(v))
            else:
                raise ValueError(f"unknown fake server option {k!r}")

    def as_dict(self) -> dict:
        return {"seed": self.seed, "latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "hang_s": self.hang_s,
                "slow_rate": self.slow_rate, "slow_factor": self.slow_factor, "rates": dict(self.rates), "models": list(self.models)}

    def is_slow(self, prompt: str) -> bool:
        """A straggler: a fixed ``slow_rate`` share of prompts, chosen by a hash of the prompt."""
        if self.slow_rate <= 0:
            return False
        h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return h < self.slow_rate


class _State:
    def __init__(self, cfg: _Config, log_path: str | None):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.rng = random.Random(cfg.seed)
        self.seq = 0
        self.log: list[dict] = []
        self.served_ok: Counter = Counter()
        self.received: Counter = Counter()
        self.faults: Counter = Counter()
        self.log_fh = open(log_path, "a", encoding="utf-8") if log_path else None

    def draw(self) -> tuple[int, str | None, float]:
        with self.lock:
            self.seq += 1
            u = self.rng.random()
            fault = None
            acc = 0.0
            for f in FAULTS:
                acc += self.cfg.rates[f]
                if u < acc:
                    fault = f
                    break
            lat = max(0.0, self.cfg.latency_ms + (2 * self.rng.random() - 1) * self.cfg.jitter_ms) / 1000.0
            return self.seq, fault, lat

    def record(self, entry: dict) -> None:
        with self.lock:
            self.log.append(entry)
            if entry.get("key"):
                self.received[entry["key"]] += 1
            if entry.get("fault"):
                self.faults[entry["fault"]] += 1
            if self.log_fh:
                self.log_fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self.log_fh.flush()

    def mark_served(self, key: str | None, seq: int) -> None:
        with self.lock:
            self.served_ok[key or f"<nokey-{seq}>"] += 1


def _make_handler(state: _State):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj, ensure_ascii=False).encode())

        def _unauthorized(self, path: str) -> bool:
            """With an api_key configured, a /v1 request without that bearer key gets a 401."""
            key = state.cfg.api_key
            if not key or not path.startswith("/v1/") or self.headers.get("Authorization") == f"Bearer {key}":
                return False
            self._json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return True

        # ---------------------------------------------------------------- GET
        def do_GET(self):
            u = urlparse(self.path)
            if u.path == "/health":
                return self._json(200, {"status": "ok"})
            if self._unauthorized(u.path):
                return None
            if u.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "finr1-tests"} for m in state.cfg.models]})
            if u.path == "/_requests":
                since = int(parse_qs(u.query).get("since", ["0"])[0])
                with state.lock:
                    out = [e for e in state.log if e["seq"] > since]
                return self._json(200, out)
            if u.path == "/_stats":
                with state.lock:
                    return self._json(
                        200,
                        {
                            "seq": state.seq,
                            "requests": len(state.log),
                            "faults": dict(state.faults),
                            "served_ok": dict(state.served_ok),
                            "received": dict(state.received),
                            "config": state.cfg.as_dict(),
                        },
                    )
            return self._json(404, {"error": {"message": f"no route {u.path}"}})

        # ---------------------------------------------------------------- POST
        def do_POST(self):
            u = urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if u.path == "/_config":
                try:
                    state.cfg.update(**json.loads(raw or b"{}"))
                except (ValueError, TypeError) as e:
                    return self._json(400, {"error": {"message": str(e)}})
                return self._json(200, state.cfg.as_dict())
            if u.path == "/_reset":
                with state.lock:
                    state.log.clear()
                    state.served_ok.clear()
                    state.received.clear()
                    state.faults.clear()
                return self._json(200, {"ok": True})
            if self._unauthorized(u.path):
                return None
            if u.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._json(404, {"error": {"message": f"no route {u.path}"}})
            try:
                body = json.loads(raw)
            except ValueError:
                return self._json(400, {"error": {"message": "request body is not JSON"}})
            chat = u.path.endswith("chat/completions")
            if chat:
                msgs = body.get("messages") or []
                prompt_text = json.dumps(msgs, ensure_ascii=False)
                prefilled = bool(msgs) and msgs[-1].get("role") == "assistant" and body.get("continue_final_message")
                ends_with_prefix = prefilled and str(msgs[-1].get("content", "")).endswith(PREFIX)
            else:
                prompt_text = body.get("prompt")
                if isinstance(prompt_text, list):
                    prompt_text = prompt_text[0] if prompt_text else ""
                prompt_text = str(prompt_text or "")
                ends_with_prefix = prompt_text.endswith(PREFIX)
            key = self.headers.get(KEY_HEADER)
            seq, fault, lat = state.draw()
            entry = {
                "seq": seq,
                "t": time.time(),
                "path": u.path,
                "key": key,
                "model": body.get("model"),
                "prompt": prompt_text,
                "continue_final_message": body.get("continue_final_message"),
                "add_generation_prompt": body.get("add_generation_prompt"),
                "max_tokens": body.get("max_tokens"),
                "temperature": body.get("temperature"),
                "top_p": body.get("top_p"),
                "fault": fault,
            }
            if state.cfg.is_slow(prompt_text):
                lat *= state.cfg.slow_factor
                entry["slow"] = True
            state.record(entry)
            if lat:
                time.sleep(lat)
            if fault == "hang":
                time.sleep(state.cfg.hang_s)
                self.close_connection = True  # drop it without a response
                return
            if fault == "429":
                return self._json_retry(429)
            if fault == "500":
                return self._json(500, {"error": {"message": "injected server error", "type": "server_error"}})
            if fault == "empty":
                return self._send(200, b"")
            reasoning, answer = fake_completion(prompt_text, str(body.get("model")), state.cfg.seed)
            text = f"{reasoning}\n</think>\n\n{answer}"
            if not ends_with_prefix:
                text = PREFIX + text
            words = text.split(" ")
            max_tokens = int(body.get("max_tokens") or 10**9)
            finish = "stop"
            if fault == "truncated":
                words, finish = words[: max(1, len(words) // 3)], "length"
            if len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
            text = " ".join(words)
            usage = {"prompt_tokens": len(prompt_text.split()), "completion_tokens": len(words), "total_tokens": len(prompt_text.split()) + len(words)}
            now = int(time.time())
            if chat:
                obj = {
                    "id": f"chatcmpl-{seq}",
                    "object": "chat.completion",
                    "created": now,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                    "usage": usage,
                }
            else:
                obj = {
                    "id": f"cmpl-{seq}",
                    "object": "text_completion",
                    "created": now,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                    "usage": usage,
                }
            payload = json.dumps(obj, ensure_ascii=False).encode()
            if fault == "malformed":
                return self._send(200, payload[: len(payload) // 2])
            try:
                self._send(200, payload)
            except OSError:
                return
            state.mark_served(key, seq)

        def _json_retry(self, code: int) -> None:
            self._send(code, json.dumps({"error": {"message": "injected rate limit", "type": "rate_limit"}}).encode(), headers={"Retry-After": "0"})

    return H


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog (5) resets connections under a burst of 64
    daemon_threads = True


class FakeOpenAI:
    """The server in a background thread of this process."""

    def __init__(self, port: int = 0, log_path: str | None = None, **cfg):
        self.state = _State(_Config(**cfg), log_path)
        self.httpd = _Server(("127.0.0.1", port), _make_handler(self.state))
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._t: threading.Thread | None = None

    def start(self) -> "FakeOpenAI":
        self._t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._t.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *a) -> None:
        self.stop()

    # same accessors as FakeOpenAIProcess
    def requests(self, since: int = 0) -> list[dict]:
        with self.state.lock:
            return [e for e in self.state.log if e["seq"] > since]

    def stats(self) -> dict:
        with self.state.lock:
            return {
                "seq": self.state.seq,
                "requests": len(self.state.log),
                "faults": dict(self.state.faults),
                "served_ok": dict(self.state.served_ok),
                "received": dict(self.state.received),
            }

    def configure(self, **kw) -> None:
        self.state.cfg.update(**kw)


class FakeOpenAIProcess:
    """The server as a subprocess (``python -m tests.fake_openai``), killed by its PID on close."""

    def __init__(self, log_path: str | None = None, **cfg):
        args = [sys.executable, str(Path(__file__).resolve()), "--port", "0"]
        for k, v in cfg.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        if log_path:
            args += ["--log", log_path]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r} {self.proc.stderr.read()[:500]}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.pid = self.proc.pid

    def _get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def _post(self, path: str, obj: dict):
        req = urllib.request.Request(self.base + path, data=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def requests(self, since: int = 0) -> list[dict]:
        return self._get(f"/_requests?since={since}")

    def stats(self) -> dict:
        return self._get("/_stats")

    def configure(self, **kw) -> dict:
        return self._post("/_config", kw)

    def reset(self) -> None:
        self._post("/_reset", {})

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

    def __enter__(self) -> "FakeOpenAIProcess":
        return self

    def __exit__(self, *a) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--hang-s", type=float, default=5.0)
    ap.add_argument("--slow-rate", type=float, default=0.0, help="share of prompts that are stragglers")
    ap.add_argument("--slow-factor", type=float, default=10.0, help="latency multiplier of a straggler")
    ap.add_argument("--fault-rate", type=float, default=None, help="total fault rate, spread evenly over all kinds")
    for f in FAULTS:
        ap.add_argument(f"--rate-{f}", type=float, default=None)
    ap.add_argument("--log", default=None, help="append every request to this JSONL file")
    ap.add_argument("--models", default=None, help="model ids GET /v1/models lists, comma-separated")
    ap.add_argument("--api-key", default=None, help="require this bearer key on /v1 requests")
    a = ap.parse_args(argv)
    cfg = dict(seed=a.seed, latency_ms=a.latency_ms, jitter_ms=a.jitter_ms, hang_s=a.hang_s, fault_rate=a.fault_rate,
               slow_rate=a.slow_rate, slow_factor=a.slow_factor, models=a.models, api_key=a.api_key)
    cfg.update({f: getattr(a, f"rate_{f}") for f in FAULTS})
    srv = FakeOpenAI(port=a.port, log_path=a.log, **cfg)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"READY {srv.port}", flush=True)
    try:
        srv.httpd.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()


if __name__ == "__main__":
    main()
