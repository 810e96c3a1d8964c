"""API-key check in front of ``transformers serve``, which has no key option of its own.

A small ASGI reverse proxy (Starlette on uvicorn): every request except ``GET /health`` must carry
``Authorization: Bearer <key>`` (compared in constant time), else 401 with an OpenAI-style error
body; accepted requests are forwarded to the upstream server, streamed both ways (SSE included).
vLLM does not need it: ``vllm serve`` checks ``VLLM_API_KEY`` itself.
"""
from __future__ import annotations

import contextlib
import hmac

import httpx

_HOP = {"host", "authorization", "content-length", "connection", "transfer-encoding", "keep-alive"}


def key_proxy_app(upstream: str, api_key: str):
    """ASGI app: check the key, forward to ``upstream`` (``http://127.0.0.1:PORT``)."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    if not api_key:
        raise ValueError("api_key must not be empty")
    expected = f"Bearer {api_key}".encode()
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=httpx.Timeout(None, connect=10))

    async def handle(request):
        if request.url.path != "/health":
            got = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return JSONResponse(
                    {"error": {"message": "invalid or missing API key", "type": "invalid_request_error", "code": "invalid_api_key"}},
                    status_code=401,
                )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        req = client.build_request(request.method, request.url.path, params=request.query_params, headers=headers, content=await request.body())
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


def run_key_proxy(upstream: str, api_key: str, host: str, port: int) -> None:
    """Serve the proxy in the foreground until SIGINT/SIGTERM (uvicorn handles both)."""
    import uvicorn

    uvicorn.run(key_proxy_app(upstream, api_key), host=host, port=port, log_level="warning", access_log=False)
