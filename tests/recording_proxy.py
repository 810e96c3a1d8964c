"""A recording reverse proxy for tests: a real HTTP server on 127.0.0.1 that forwards every
request to an upstream OpenAI-compatible server and keeps what it received.

It lets a test check what the model server was actually sent (the forced ``<think>\\n`` prefix,
no system prompt) with the real embedded ``transformers serve`` behind it.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class RecordingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.received: list[dict] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _forward(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if body:
                    try:
                        rec = json.loads(body)
                    except ValueError:
                        rec = {"raw": body.decode("utf-8", "replace")}
                    with proxy._lock:
                        proxy.received.append({"path": self.path, "body": rec})
                r = httpx.request(method, proxy.upstream + self.path, content=body,
                                  headers={"content-type": "application/json"}, timeout=600)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_POST(self):
                self._forward("POST")

            def do_GET(self):
                self._forward("GET")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
