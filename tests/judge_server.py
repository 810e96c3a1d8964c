"""A small scripted OpenAI-compatible server for judge tests: a real HTTP server on 127.0.0.1.

The reply is computed by a Python function of the received prompt, so a test can script a judge
that reacts to what actually reached it (e.g. says ``\\boxed{1}`` only when the candidate's own
``\\boxed{1}`` arrives unescaped). Every request is recorded.

    with JudgeServer(lambda prompt, n: "理由… \\\\boxed{1}") as srv:
        srv.base_url  # http://127.0.0.1:PORT/v1

The reply function gets ``(prompt_text, request_index)`` and returns either a string (the
completion text) or an ``(http_status, body_text)`` tuple for an error reply.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = Callable[[str, int], "str | tuple[int, str]"]


class JudgeServer:
    def __init__(self, reply: Reply, host: str = "127.0.0.1", models: tuple[str, ...] = ("judge",)):
        self.reply = reply
        self.models = list(models)  # what GET /v1/models lists (the run's pre-flight checks it)
        self.requests: list[dict] = []  # {"path", "body", "prompt", "status"}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, obj) -> None:
                data = (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                chat = self.path.rstrip("/").endswith("/chat/completions")
                if chat:
                    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
                elif self.path.rstrip("/").endswith("/completions"):
                    prompt = body.get("prompt", "")
                else:
                    return self._send(404, {"error": {"message": "not found"}})
                with outer._lock:
                    idx = len(outer.requests)
                    rec = {"path": self.path, "body": body, "prompt": prompt, "status": 200,
                           "authorization": self.headers.get("Authorization")}
                    outer.requests.append(rec)
                out = outer.reply(prompt, idx)
                if isinstance(out, tuple):
                    rec["status"] = out[0]
                    return self._send(out[0], {"error": {"message": str(out[1]), "type": "server_error"}})
                usage = {"prompt_tokens": len(prompt), "completion_tokens": len(out), "total_tokens": len(prompt) + len(out)}
                now = int(time.time())
                if chat:
                    resp = {"id": f"chatcmpl-{idx}", "object": "chat.completion", "created": now, "model": body.get("model"),
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": out}}], "usage": usage}
                else:
                    resp = {"id": f"cmpl-{idx}", "object": "text_completion", "created": now, "model": body.get("model"),
                            "choices": [{"index": 0, "finish_reason": "stop", "text": out, "logprobs": None}], "usage": usage}
                self._send(200, resp)

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def prompts(self) -> list[str]:
        return [r["prompt"] for r in self.requests]
