"""A run's lineage: what was done to the run itself, one JSON object per line in
``<root>/<run_id>/lineage.jsonl`` (config overrides, repairs). Rows carry their own lineage columns;
this file is the run-level record.

``amend_run_config`` fixes a saved run config with dotted ``key=value`` overrides (the same syntax
as ``finr1 retry-failed RUN_ID --set teacher.endpoints.0.base_url=http://host:8000/v1``), validates
the result, writes it back as the run's ``config.json`` and appends the change to the lineage.
"""
from __future__ import annotations

import copy
import getpass
import json
import socket
from datetime import datetime, timezone
from typing import Any

import yaml
from pydantic import ValidationError

from finr1_core.config import ConfigError, PipelineConfig, one_line_error
from finr1_core.storage import Store, config_hash

LINEAGE_FILE = "lineage.jsonl"
MISSING = "<unset>"


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are YAML scalars/lists (``null``, ``true``, ``3``)."""
    out: dict[str, Any] = {}
    for s in sets:
        key, sep, raw = s.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--set {s!r}: expected KEY=VALUE with a dotted key, e.g. teacher.endpoints.0.base_url=http://host:8000/v1")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
    """A copy of ``raw`` with each dotted key set (list items by index). Returns (new, previous values)."""
    new = copy.deepcopy(raw)
    before: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        cur: Any = new
        for i, p in enumerate(parts[:-1]):
            cur = _step(cur, p, key, parts[: i + 1])
        last = parts[-1]
        if isinstance(cur, list):
            idx = _index(cur, last, key)
            before[key] = cur[idx]
            cur[idx] = value
        elif isinstance(cur, dict):
            before[key] = cur.get(last, MISSING)
            cur[last] = value
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is a value, not a section")
    return new, before


def _step(cur: Any, p: str, key: str, path: list[str]) -> Any:
    if isinstance(cur, list):
        return cur[_index(cur, p, key)]
    if not isinstance(cur, dict):
        raise ConfigError(f"--set {key}: {'.'.join(path[:-1])} is a value, not a section")
    if cur.get(p) is None:
        cur[p] = {}
    return cur[p]


def _index(lst: list, p: str, key: str) -> int:
    if not p.isdigit() or int(p) >= len(lst):
        raise ConfigError(f"--set {key}: {p!r} is not an item of a list of {len(lst)}")
    return int(p)


def append_lineage(store: Store, event: dict) -> dict:
    """Append one event (timestamped, with who and where) to the run's lineage file."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    rec = {"at": datetime.now(timezone.utc).isoformat(), "user": user, "host": socket.gethostname(), **event}
    uri = store.uri(LINEAGE_FILE)
    old = store.read_bytes(uri) if store.exists(uri) else b""
    store.write_bytes_atomic(uri, old + (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode())
    return rec


def read_lineage(store: Store) -> list[dict]:
    uri = store.uri(LINEAGE_FILE)
    if not store.exists(uri):
        return []
    return [json.loads(line) for line in store.read_bytes(uri).decode().splitlines() if line.strip()]


def amend_run_config(storage_root: str, run_id: str, sets: list[str], command: str = "retry-failed") -> PipelineConfig:
    """Apply ``--set`` overrides to the run's saved config, validate, save it back, and record the
    change in the lineage. Raises ConfigError (one line naming the key) and changes nothing then."""
    store = Store(storage_root, run_id)
    uri = store.uri("config.json")
    if not store.exists(uri):
        raise ConfigError(f"no run {run_id!r} under {storage_root} (missing {uri})")
    raw = store.read_json(uri)
    overrides = parse_sets(sets)
    if "run_id" in overrides or "storage_root" in overrides:
        raise ConfigError("--set: run_id and storage_root name the run; they cannot be changed")
    new, before = apply_overrides(raw, overrides)
    try:
        cfg = PipelineConfig.model_validate(new)
    except ValidationError as e:
        raise ConfigError(one_line_error(e).replace("config error: ", f"config error (after --set {' '.join(sets)}): ", 1)) from None
    store.write_json(uri, cfg.public_dict())
    append_lineage(store, {"event": "config-override", "command": command, "set": overrides, "before": before,
                           "config_hash_before": config_hash(raw), "config_hash_after": config_hash(cfg.public_dict())})
    return cfg
