"""``ClientSpec``: the one way to describe and build an :class:`~finr1_core.llm.LLMClient`.

A spec is a frozen, picklable value (model, mode, endpoints, caps, retries, rpm/tpm). It is what
travels to Ray workers; each process calls :meth:`ClientSpec.build` to get its own client. API
keys are never part of a spec: an endpoint names the environment variable that holds its key
(``api_key_env``) and :meth:`build` reads it from the environment of the process that builds the
client. So a key is never pickled into a Ray payload, a result, a log or a file.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from .client import MODES, Endpoint, LLMClient, api_key_from_env, default_key_var, key_env_var

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    base_url: str
    api_key_env: str | None = None  # the variable holding the key (None = no key)
    max_concurrency: int | None = None  # overrides of the client-wide limits (None = the client's)
    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True)
class ClientSpec:
    model: str
    endpoints: tuple[EndpointSpec, ...]
    mode: str = "completions"
    tokenizer: str | None = None
    max_concurrency: int = 8  # per endpoint
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    rpm: float | None = None  # per endpoint
    tpm: float | None = None
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    workers: int = field(default=1, compare=False)  # how many clients share the limits above

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints: at least one endpoint is needed")
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}; got {self.mode!r}")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoints: names must be unique; got {names}")
        for e in self.endpoints:
            if not e.base_url:
                raise ValueError(f"endpoints.{e.name}.base_url: no base_url and no managed server URL was given")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_role(cls, role: Any, base_url: str | dict | None = None, **overrides: Any) -> "ClientSpec":
        """From an ``LLMRole`` config. ``base_url`` fills endpoints whose ``base_url`` is null (the
        managed local server; a ``{"urls": {model: url}}`` map: the role model's entry). ``overrides`` replace single fields (e.g. ``max_retries=0``)."""
        if isinstance(base_url, dict):  # the managed servers' map: one URL per served model
            base_url = (base_url.get("urls") or {}).get(role.model)
        eps = tuple(
            EndpointSpec(e.name, e.base_url or base_url or "", key_env_var(e)) for e in role.endpoints
        )
        g = lambda k, d=None: getattr(role, k, d)  # noqa: E731
        spec = cls(
            model=role.model,
            endpoints=eps,
            mode=role.mode,
            tokenizer=g("tokenizer") or role.model,
            max_concurrency=int(role.max_concurrency),
            timeout_s=float(role.timeout_s),
            max_retries=int(role.max_retries),
            backoff_base_s=float(g("backoff_base_s", 0.5)),
            backoff_max_s=float(g("backoff_max_s", 20.0)),
            rpm=g("rpm"),
            tpm=g("tpm"),
        )
        return replace(spec, **overrides) if overrides else spec

    @classmethod
    def from_endpoints(cls, endpoints: Sequence[Endpoint], role: Any, **overrides: Any) -> "ClientSpec":
        """From :class:`Endpoint` objects (programmatic use) and an ``LLMRole`` for the limits.

        An endpoint that carries a key but no variable gets ``FINR1_API_KEY_<NAME>``, set in this
        process's environment: processes started afterwards (a local Ray) inherit it; a remote
        worker needs the variable in its own environment."""
        eps = []
        for e in endpoints:
            var = e.api_key_env
            if var is None and e.api_key and e.api_key != "EMPTY":
                var = default_key_var(e.name)
                os.environ[var] = e.api_key
            eps.append(EndpointSpec(e.name, e.base_url, var, e.max_concurrency, e.rpm, e.tpm))
        base = cls.from_role(role, endpoints[0].base_url if endpoints else None)
        return replace(base, endpoints=tuple(eps), **overrides)

    # ------------------------------------------------------------------ use
    def for_workers(self, n: int) -> "ClientSpec":
        """The spec of one of ``n`` clients that share this spec's limits: concurrency caps (rounded
        up), rpm and tpm divided by ``n``, per endpoint."""
        n = max(1, int(n))
        if n == 1:
            return self
        cap = lambda v: None if v is None else max(1, math.ceil(v / n))  # noqa: E731
        div = lambda v: None if v is None else v / n  # noqa: E731
        eps = tuple(replace(e, max_concurrency=cap(e.max_concurrency), rpm=div(e.rpm), tpm=div(e.tpm)) for e in self.endpoints)
        return replace(self, endpoints=eps, max_concurrency=cap(self.max_concurrency), rpm=div(self.rpm), tpm=div(self.tpm),
                       workers=self.workers * n)

    def capacity(self) -> int:
        """Requests this client runs at once over all its endpoints."""
        return sum(e.max_concurrency or self.max_concurrency for e in self.endpoints)

    def missing_keys(self) -> list[str]:
        """Key variables this spec names that are not set in this process's environment."""
        return [e.api_key_env for e in self.endpoints if e.api_key_env and not os.environ.get(e.api_key_env)]

    def build(self) -> LLMClient:
        """An :class:`LLMClient`, with each endpoint's key read from this process's environment."""
        for var in self.missing_keys():
            log.warning("API key variable %s is not set in this process (pid %d): requests go without a key", var, os.getpid())
        eps = [Endpoint(e.name, e.base_url, api_key_from_env(e.api_key_env), e.max_concurrency, e.rpm, e.tpm, api_key_env=e.api_key_env)
               for e in self.endpoints]
        return LLMClient(
            eps,
            self.model,
            mode=self.mode,
            tokenizer_path=self.tokenizer,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            rpm=self.rpm,
            tpm=self.tpm,
            breaker_threshold=self.breaker_threshold,
            breaker_cooldown_s=self.breaker_cooldown_s,
        )

    def to_dict(self) -> dict:
        """JSON-safe form (no keys: there are none to leak)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClientSpec":
        d = dict(d)
        d["endpoints"] = tuple(EndpointSpec(**e) for e in d["endpoints"])
        return cls(**d)
