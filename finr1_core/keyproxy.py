"""The front of ``transformers serve`` (``finr1 serve --engine transformers``): an API-key check,
the model list and the context-length check, none of which ``transformers serve`` does itself.

A small ASGI reverse proxy (Starlette on uvicorn):

- with a key, every request except ``GET /health`` must carry ``Authorization: Bearer <key>``
  (compared in constant time), else 401 with an OpenAI-style error body;
- ``GET /v1/models`` lists the served model (``transformers serve`` answers it with a 500: it
  scans a hub cache that an offline machine does not have);
- a completion whose prompt plus ``max_tokens`` exceeds the model's context length is refused at
  once with a 400 naming the context length (``transformers serve`` answers it with junk after
  minutes), as vLLM does;
- everything else is forwarded to the upstream server, streamed both ways (SSE included).

vLLM does not need it: ``vllm serve`` does all three itself (``VLLM_API_KEY``).
"""
from __future__ import annotations

import contextlib
import hmac
import time

import httpx

_HOP = {"host", "authorization", "content-length", "connection", "transfer-encoding", "keep-alive"}


class ModelFacts:
    """What the front knows of the served model: its id (the served path), context length and tokenizer."""

    def __init__(self, model_dir: str):
        import json
        from pathlib import Path

        from transformers import AutoTokenizer

        self.id = model_dir
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = {**cfg.get("text_config", {}), **cfg}
        self.context_len = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 0) or None
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.created = int(time.time())

    def model_list(self) -> dict:
        return {"object": "list", "data": [{"id": self.id, "object": "model", "created": self.created, "owned_by": "finr1",
                                            "max_model_len": self.context_len}]}

    def prompt_tokens(self, path: str, body: dict) -> int | None:
        """Tokens of the request's prompt (None when the body has no prompt this can count)."""
        if path.endswith("/chat/completions"):
            msgs = body.get("messages")
            if not isinstance(msgs, list):
                return None
            ids = self.tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=not body.get("continue_final_message"),
                                                     continue_final_message=bool(body.get("continue_final_message")))
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            return len(ids)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if prompt and all(isinstance(t, int) for t in prompt):
                return len(prompt)
            return max((len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompt if isinstance(p, str)), default=None)
        if isinstance(prompt, str):
            return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return None

    def too_long(self, path: str, body: dict) -> dict | None:
        """An OpenAI-style 400 body when prompt + max_tokens exceed the context length (vLLM's wording)."""
        if not self.context_len:
            return None
        try:
            n = self.prompt_tokens(path, body)
        except Exception:  # noqa: BLE001 - a prompt this cannot count goes to the server as is
            return None
        if n is None:
            return None
        want = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        if n + max(want, 1) <= self.context_len:
            return None
        return {"error": {
            "message": (f"This model's maximum context length is {self.context_len} tokens. However, you requested "
                        f"{n + want} tokens ({n} in the prompt, {want} for the completion). Please reduce the length of the prompt or max_tokens."),
            "type": "invalid_request_error", "param": "messages" if path.endswith("/chat/completions") else "prompt",
            "code": "context_length_exceeded"}}


def key_proxy_app(upstream: str, api_key: str | None, facts: ModelFacts | None = None):
    """ASGI app: check the key (when given), answer the model list and refuse over-long prompts
    (with ``facts``), forward the rest to ``upstream`` (``http://127.0.0.1:PORT``)."""
    import asyncio
    import json

    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty")
    expected = f"Bearer {api_key}".encode() if api_key else None
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=httpx.Timeout(None, connect=10))

    async def handle(request):
        path = request.url.path
        if expected is not None and path != "/health":
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return JSONResponse(
                    {"error": {"message": "invalid or missing API key", "type": "invalid_request_error", "code": "invalid_api_key"}},
                    status_code=401,
                )
        body = await request.body()
        if facts is not None and request.method == "GET" and path.rstrip("/") == "/v1/models":
            return JSONResponse(facts.model_list())
        if facts is not None and request.method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            try:
                parsed = json.loads(body or b"{}")
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                refused = await asyncio.to_thread(facts.too_long, path, parsed)
                if refused is not None:
                    return JSONResponse(refused, status_code=400)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        req = client.build_request(request.method, path, params=request.query_params, headers=headers, content=body)
        try:
            r = await client.send(req, stream=True)
        except httpx.HTTPError as e:
            return JSONResponse({"error": {"message": f"upstream model server: {type(e).__name__}", "type": "server_error"}}, status_code=502)
        out_headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(r.aiter_raw(), status_code=r.status_code, headers=out_headers, background=BackgroundTask(r.aclose))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)], lifespan=lifespan)


def run_key_proxy(upstream: str, api_key: str | None, host: str, port: int, model_dir: str | None = None) -> None:
    """Serve the proxy in the foreground until SIGINT/SIGTERM (uvicorn handles both). With
    ``model_dir``, it also answers ``/v1/models`` and refuses over-long prompts (:class:`ModelFacts`)."""
    import uvicorn

    facts = ModelFacts(model_dir) if model_dir else None
    uvicorn.run(key_proxy_app(upstream, api_key, facts), host=host, port=port, log_level="warning", access_log=False)
