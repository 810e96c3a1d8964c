"""Fail before work: checks that take seconds and run before ingest writes anything.

- :func:`check_run_options` validates the ``finr1 run`` options (no network, no Prefect);
- :func:`preflight` asks every teacher and judge endpoint for ``GET <base_url>/models`` with a
  short timeout and checks the configured model is served. Endpoints without ``base_url`` (the
  managed local server) are skipped unless ``base_url`` is given. All endpoints are asked at once,
  so the whole check takes at most about one timeout.

Every failure is one line naming the role, the endpoint and what is wrong::

    preflight: teacher endpoint 'r1' (http://127.0.0.1:9/v1): cannot connect (Connection refused)
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from finr1_core.config import STAGES, ConfigError, PipelineConfig, check_run_id, check_storage_root
from finr1_core.llm import api_key_from_env


class PreflightError(RuntimeError):
    """One or more endpoints are unusable; ``str()`` is one line, ``failures`` has them all."""

    def __init__(self, failures: list[str]):
        more = f" [+{len(failures) - 1} more]" if len(failures) > 1 else ""
        super().__init__(failures[0] + more)
        self.failures = failures


@dataclass
class EndpointCheck:
    role: str
    endpoint: str
    url: str
    model: str
    ok: bool
    detail: str  # what is wrong, or the served models when ok

    def line(self) -> str:
        return f"preflight: {self.role} endpoint {self.endpoint!r} ({self.url}): {self.detail}"


def check_run_options(stop_after: str | None = None, limit: int | None = None, run_id: str | None = None,
                      start: str | None = None) -> None:
    """Validate ``finr1 run`` / ``retry-failed`` options; ConfigError (one line naming the option)."""
    for opt, v in (("--start", start), ("--stop-after", stop_after)):
        if v is not None and v not in STAGES:
            raise ConfigError(f"{opt}: unknown stage {v!r} (one of: {', '.join(STAGES)})")
    if start and stop_after and STAGES.index(start) > STAGES.index(stop_after):
        raise ConfigError(f"--stop-after: {stop_after!r} comes before --start {start!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1 (got {limit})")
    if run_id is not None:
        try:
            check_run_id(run_id)
        except ValueError as e:
            raise ConfigError(f"--run-id: {e} (got {run_id!r})") from None


def check_run_target(run_id: str, storage_root: str, run_id_name: str = "RUN_ID") -> None:
    """Validate the run id and storage root a command works on (``check``, ``retry-failed``,
    ``release push``) as ``finr1 run`` does: a run id is never a path out of the storage root.
    ConfigError, one line naming the argument."""
    try:
        check_run_id(run_id)
    except ValueError as e:
        raise ConfigError(f"{run_id_name}: {e} (got {run_id!r})") from None
    try:
        check_storage_root(storage_root)
    except ValueError as e:
        raise ConfigError(f"--storage: {e} (got {storage_root!r})") from None


def _targets(cfg: PipelineConfig, base_url: str | None, roles: tuple[str, ...]) -> list[tuple[str, str, str, str, str]]:
    """(role, endpoint name, url, model, api key) of every endpoint to ask."""
    out = []
    for role in roles:
        rc = getattr(cfg, role)
        for ec in rc.endpoints:
            url = ec.base_url or base_url
            if url:
                out.append((role, ec.name, url.rstrip("/"), rc.model, api_key_from_env(ec.api_key_env)))
    return out


def _ask(url: str, key: str, timeout_s: float) -> tuple[list[str] | None, str]:
    """(served model ids, '') or (None, what is wrong)."""
    headers = {"Authorization": f"Bearer {key}"} if key and key != "EMPTY" else {}
    try:
        r = httpx.get(f"{url}/models", headers=headers, timeout=timeout_s, follow_redirects=True)
    except httpx.TimeoutException:
        return None, f"no answer within {timeout_s:g}s (GET {url}/models)"
    except httpx.HTTPError as e:
        reason = str(e).split("] ")[-1] or type(e).__name__
        return None, f"cannot connect ({' '.join(reason.split())[:160]})"
    if r.status_code in (401, 403):
        return None, f"HTTP {r.status_code} on GET {url}/models: the API key is missing or wrong (set the endpoint's api_key_env)"
    if r.status_code != 200:
        return None, f"HTTP {r.status_code} on GET {url}/models (is this an OpenAI-compatible base URL ending in /v1?)"
    try:
        data = r.json()["data"]
        return [str(m["id"]) for m in data], ""
    except (ValueError, KeyError, TypeError):
        return None, f"GET {url}/models did not return an OpenAI model list"


def check_endpoints(cfg: PipelineConfig, base_url: str | None = None, timeout_s: float = 5.0,
                    roles: tuple[str, ...] = ("teacher", "judge")) -> list[EndpointCheck]:
    """Ask every endpoint of ``roles`` (one request per distinct URL and key, all at once)."""
    targets = _targets(cfg, base_url, roles)
    distinct = sorted({(url, key) for _, _, url, _, key in targets})
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(distinct)))) as ex:
        answers = dict(zip(distinct, ex.map(lambda uk: _ask(uk[0], uk[1], timeout_s), distinct)))
    out = []
    for role, name, url, model, key in targets:
        served, err = answers[(url, key)]
        if served is None:
            out.append(EndpointCheck(role, name, url, model, False, err))
        elif model not in served:
            shown = ", ".join(served[:5]) + (f" (+{len(served) - 5} more)" if len(served) > 5 else "")
            out.append(EndpointCheck(role, name, url, model, False, f"model {model!r} is not served (serves: {shown or 'nothing'}); fix {role}.model"))
        else:
            out.append(EndpointCheck(role, name, url, model, True, f"serves {model!r}"))
    return out


def preflight(cfg: PipelineConfig, base_url: str | None = None, timeout_s: float = 5.0,
              roles: tuple[str, ...] = ("teacher", "judge")) -> list[EndpointCheck]:
    """:func:`check_endpoints`, raising :class:`PreflightError` when any endpoint fails."""
    checks = check_endpoints(cfg, base_url, timeout_s, roles)
    bad = [c.line() for c in checks if not c.ok]
    if bad:
        raise PreflightError(bad)
    return checks
