"""Run ids and run configs: where a run lives and what it was started with."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from finr1_core.config import PipelineConfig, load_config
from finr1_core.storage import Store


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def load(config_path: str | None = None, run_id: str | None = None, **overrides) -> PipelineConfig:
    """Load and validate a config (one-line ``ConfigError``); ``run_id`` names the run."""
    cfg = load_config(config_path, overrides)
    if run_id:
        cfg.run_id = run_id
    return cfg


def store_for(cfg: PipelineConfig) -> Store:
    if not cfg.run_id:
        raise ValueError("run_id is not set")
    return Store(cfg.storage_root, cfg.run_id)


def save_run_config(cfg: PipelineConfig) -> None:
    """Keep the run's resolved config with the run (never secrets: keys stay in the environment)."""
    store = store_for(cfg)
    store.write_json(store.uri("config.json"), cfg.public_dict())


def load_run_config(storage_root: str, run_id: str) -> PipelineConfig:
    """The config a run was started with, so a retry redoes exactly the missing work."""
    store = Store(storage_root, run_id)
    uri = store.uri("config.json")
    if not store.exists(uri):
        raise ValueError(f"no run {run_id!r} under {storage_root} (missing {uri})")
    return PipelineConfig.model_validate(store.read_json(uri))
