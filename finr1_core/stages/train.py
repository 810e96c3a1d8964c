"""sft and grpo: the student trained on the released splits. Each checkpoint is a folder under
``<run>/models/<name>/`` with a ``.finr1-done.json`` marker written last (its hash says which
inputs made it), so a finished checkpoint is never trained twice."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from finr1_core.config import PipelineConfig, finr1_home
from finr1_core.stages.base import Context, Stage
from finr1_core.stages.runs import store_for

MARKER = ".finr1-done.json"


def model_dirs(cfg: PipelineConfig, name: str) -> tuple[Path, str]:
    """(local working folder, storage URI) of checkpoint ``name``."""
    store = store_for(cfg)
    uri = store.uri("models", name)
    if store.is_local:
        return Path(store.fs_path(uri)), uri
    return finr1_home() / "work" / cfg.run_id / "models" / name, uri


def _marker(local: Path) -> dict | None:
    f = local / MARKER
    return json.loads(f.read_text()) if f.exists() else None


def _finish(cfg: PipelineConfig, local: Path, uri: str, info: dict) -> dict:
    """Write the marker last, then publish the folder to remote storage."""
    (local / MARKER).write_text(json.dumps(info, indent=2, default=str))
    store = store_for(cfg)
    if not store.is_local:
        store.fs.put(str(local), store.fs_path(uri), recursive=True)
    return info


def model_path(cfg: PipelineConfig, name: str) -> str | None:
    """Local path of a checkpoint; ``None`` when its stage trained nothing (an empty SFT route)."""
    if name == "base":
        return cfg.train.base_model
    local, uri = model_dirs(cfg, name)
    store = store_for(cfg)
    if _marker(local) is None and store.exists(uri + "/" + MARKER):
        local.mkdir(parents=True, exist_ok=True)
        store.fs.get(store.fs_path(uri), str(local), recursive=True)
    m = _marker(local)
    if m is None or m.get("empty"):
        return None
    return str(local)


def _trained(name: str):
    def done(ctx: Context) -> dict | None:
        m = _marker(model_dirs(ctx.cfg, name)[0])
        return m if m and m.get("hash") == ctx.hash else None

    return done


def _sft(ctx: Context) -> dict:
    from finr1_core.training import run_sft

    cfg = ctx.cfg
    local, uri = model_dirs(cfg, "sft")
    rows = ctx.store.read_rows("sft")
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True, exist_ok=True)
    if not rows:
        # Nothing passed both filter rounds (the embedded 135M teacher rarely closes its think
        # block). Skipping is reported, never hidden: GRPO then starts from the base model.
        info = {"hash": ctx.hash, "model": "sft", "path": None, "uri": None, "steps": 0, "rows": 0, "empty": True,
                "reason": "the SFT route is empty: no trace passed both filter rounds"}
        return _finish(cfg, local, uri, info)
    res = run_sft(cfg.train.base_model, rows, str(local), cfg.train.sft, seed=cfg.train.seed)
    info = {"hash": ctx.hash, "model": "sft", "path": str(local), "uri": uri, "steps": res.steps, "train_loss": res.train_loss,
            "rows": res.rows, "seconds": round(res.seconds, 1)}
    return _finish(cfg, local, uri, info)


def grpo_prompts(store) -> list[dict]:
    """GRPO prompts: RL rows first (what SFT could not learn), then SFT rows, as Fin-R1 did; only
    prompts with a gold answer (the accuracy reward needs one)."""
    prompts = {p["record_id"]: p for p in store.read_rows("prompts")}
    ids = [r["record_id"] for r in store.read_rows("rl")] + [r["record_id"] for r in store.read_rows("sft")]
    seen, rows = set(), []
    for i in ids:
        if i in prompts and i not in seen and prompts[i].get("answer"):
            seen.add(i)
            rows.append(prompts[i])
    return rows


def _grpo(ctx: Context) -> dict:
    from finr1_core.training import run_grpo

    cfg = ctx.cfg
    local, uri = model_dirs(cfg, "grpo")
    rows = grpo_prompts(ctx.store)
    start = model_path(cfg, "sft") or cfg.train.base_model
    shutil.rmtree(local, ignore_errors=True)
    res = run_grpo(start, rows, str(local), cfg.train.grpo, seed=cfg.train.seed, think_prefix=cfg.prompts.think_prefix)
    rewards = [{k: v for k, v in e.items() if k.startswith("reward") or k in ("loss", "grad_norm")} for e in res.log_history if "reward" in e]
    info = {"hash": ctx.hash, "model": "grpo", "path": str(local), "uri": uri, "init": start, "steps": res.steps, "train_loss": res.train_loss,
            "prompts": res.rows, "seconds": round(res.seconds, 1), "rewards": rewards}
    return _finish(cfg, local, uri, info)


SFT = Stage(
    name="sft",
    inputs=("split",),
    outputs=(),
    depends=lambda c: (c.train.base_model, c.train.sft, c.train.seed),
    body=_sft,
    done=_trained("sft"),
    doc="released sft split -> SFT checkpoint (TRL)",
)

GRPO = Stage(
    name="grpo",
    inputs=("sft",),
    outputs=(),
    depends=lambda c: (c.train.grpo, c.train.seed, c.prompts.think_prefix),
    body=_grpo,
    done=_trained("grpo"),
    doc="rl + sft prompts -> GRPO checkpoint (TRL; format and accuracy rewards), from the SFT checkpoint",
)
