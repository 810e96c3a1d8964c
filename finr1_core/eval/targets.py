"""Named evaluation targets: a local checkpoint (served by finr1 for the duration) or an
OpenAI-compatible endpoint.

Spec syntax (``--model``)::

    base=/path/to/checkpoint                 a local model directory
    gpt=https://api.example.com/v1#gpt-4o    an endpoint URL, '#' then the model name it serves

The API key of an endpoint target comes from the environment: ``FINR1_EVAL_KEY_<NAME>`` (name
upper-cased, other characters as ``_``), else ``OPENAI_API_KEY``, else none. A config names its
own variable (``api_key_env``) or a Prefect Secret block (resolved by the task).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from finr1_core.llm import MODES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class EvalError(ValueError):
    """A bad eval request, rendered as one line."""


@dataclass(frozen=True)
class ModelTarget:
    name: str
    path: str | None = None  # local checkpoint directory
    base_url: str | None = None  # OpenAI-compatible endpoint
    model: str | None = None  # model name sent to the endpoint
    mode: str | None = None  # completions | chat-prefill | chat (default: completions local, chat remote)
    api_key: str = field(default="EMPTY", repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def request_model(self) -> str:
        return self.path if self.is_local else (self.model or "")

    @property
    def request_mode(self) -> str:
        return self.mode or ("completions" if self.is_local else "chat")

    def identity(self) -> str:
        """What the cached outputs depend on (not the key, not the server's address for local models)."""
        where = f"local:{Path(self.path).resolve()}@{weights_fingerprint(self.path)}" if self.is_local else f"url:{self.base_url}#{self.model}"
        return f"{where}|{self.request_mode}"

    def identity_hash(self) -> str:
        return hashlib.sha256(self.identity().encode()).hexdigest()[:10]


def weights_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a checkpoint's weight and config files: a model
    retrained into the same folder (the pipeline's models/sft) gets a new identity, so its
    cached answers are not reused."""
    d = Path(path)
    files = sorted(p for p in d.glob("*") if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()) if d.is_dir() else []
    blob = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def env_key_for(name: str) -> str:
    return "FINR1_EVAL_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def check_local_model(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise EvalError(f"{what}: {path} is not a directory")
    if not (p / "config.json").exists():
        raise EvalError(f"{what}: {path} is not a model directory (no config.json)")
    return str(p.resolve())


def parse_model_spec(spec: str, *, check: bool = True, api_key_env: str | None = None, mode: str | None = None) -> ModelTarget:
    """``NAME=PATH`` or ``NAME=URL#MODEL`` -> :class:`ModelTarget` (one-line :class:`EvalError` if bad)."""
    name, sep, where = spec.partition("=")
    name, where = name.strip(), where.strip()
    if not sep or not name or not where:
        raise EvalError(f"--model {spec!r}: expected NAME=PATH or NAME=URL#MODEL")
    if not _NAME.match(name):
        raise EvalError(f"--model {spec!r}: name must be letters, digits, '_', '-', '.' (at most 64)")
    if mode is not None and mode not in MODES:
        raise EvalError(f"--model {name}: mode must be one of {', '.join(MODES)} (got {mode!r})")
    if where.startswith(("http://", "https://")):
        url, _, model = where.partition("#")
        if not model:
            raise EvalError(f"--model {name}: an endpoint needs its model name after '#': {name}={url}#MODEL")
        var = api_key_env or env_key_for(name)
        key = os.environ.get(var) or (os.environ.get("OPENAI_API_KEY") if api_key_env is None else None) or "EMPTY"
        return ModelTarget(name, base_url=url.rstrip("/"), model=model, mode=mode, api_key=key)
    path = check_local_model(where, f"--model {name}") if check else where
    return ModelTarget(name, path=path, mode=mode)


def parse_targets(specs: list[str]) -> list[ModelTarget]:
    targets = [parse_model_spec(s) for s in specs]
    if not targets:
        raise EvalError("--model: give at least one NAME=PATH or NAME=URL#MODEL")
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalError(f"--model: names must be unique (repeated: {', '.join(dup)})")
    return targets
