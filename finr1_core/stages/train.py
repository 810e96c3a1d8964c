"""sft and grpo: the student trained on the released splits. Each checkpoint is a folder under
``<run>/models/<name>/`` with a ``.finr1-done.json`` marker written last (its hash says which
inputs made it), so a finished checkpoint is never trained twice."""
from __future__ import annotations

import json
from pathlib import Path

from finr1_core.config import PipelineConfig
from finr1_core.stages.base import Context, Stage
from finr1_core.stages.runs import store_for

MARKER = ".finr1-done.json"


def model_dirs(cfg: PipelineConfig, name: str) -> tuple[Path, str]:
    """(local working folder, storage URI) of checkpoint ``name``: the trainer writes into the local
    folder, which is the storage folder itself for a local root and a staging folder synced to
    ``s3://`` (every checkpoint as it is saved) otherwise."""
    from finr1_core.training.checkpoints import local_dir

    uri = store_for(cfg).uri("models", name)
    return local_dir(uri), uri


def _marker(local: Path) -> dict | None:
    f = local / MARKER
    return json.loads(f.read_text()) if f.exists() else None


def _finish(cfg: PipelineConfig, local: Path, uri: str, info: dict) -> dict:
    """Write the marker last (also to remote storage): the checkpoint is then complete."""
    local.mkdir(parents=True, exist_ok=True)
    (local / MARKER).write_text(json.dumps(info, indent=2, default=str))
    store = store_for(cfg)
    if not store.is_local:
        store.fs.put(str(local / MARKER), store.fs_path(uri + "/" + MARKER))
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


def checkpoint_info(cfg: PipelineConfig, name: str) -> dict | None:
    """What the training stage recorded about checkpoint ``name`` (steps, loss, rewards, plot)."""
    if model_path(cfg, name) is None and _marker(model_dirs(cfg, name)[0]) is None:
        return None
    return _marker(model_dirs(cfg, name)[0])


def _trained(name: str):
    def done(ctx: Context) -> dict | None:
        m = _marker(model_dirs(ctx.cfg, name)[0])
        return m if m and m.get("hash") == ctx.hash else None

    return done


def _launch(ctx: Context, method: str, rows: list[dict], init: str, **overrides) -> dict:
    """Train ``method`` as its own job (``accelerate launch``, the recipe's processes) on ``rows``
    from ``init``; a retry resumes from the last complete checkpoint in the output folder."""
    from finr1_core.training.data import write_rows
    from finr1_core.training.launch import train

    cfg = ctx.cfg
    st = getattr(cfg.train, method)
    local, uri = model_dirs(cfg, method)
    data = write_rows(rows, ctx.store.uri("models", f"{method}-data.parquet"))
    res = train(method, st.recipe, data, uri, num_processes=st.num_processes, launcher=st.launcher,
                overrides={"model_name_or_path": init, "seed": cfg.train.seed, **overrides, **st.overrides},
                on_line=ctx.options.get("on_line") or print, accelerate_config=st.accelerate_config,
                ray_address=cfg.distill.ray_address)
    keep = ("steps", "train_loss", "resumed_from_step", "steps_this_attempt", "reward", "engine", "peak_memory_gib", "plot", "tensorboard", "checkpoint")
    info = {"hash": ctx.hash, "model": method, "path": str(local), "uri": uri, "init": init, "rows": len(rows),
            **{k: res.get(k) for k in keep}}
    return _finish(cfg, local, uri, info)


def _sft(ctx: Context) -> dict:
    rows = ctx.store.read_rows("sft")
    if not rows:
        # Nothing passed both filter rounds (the embedded 135M teacher rarely closes its think
        # block). Skipping is reported, never hidden: GRPO then starts from the base model.
        local, uri = model_dirs(ctx.cfg, "sft")
        info = {"hash": ctx.hash, "model": "sft", "path": None, "uri": None, "steps": 0, "rows": 0, "empty": True,
                "reason": "the SFT route is empty: no trace passed both filter rounds"}
        return _finish(ctx.cfg, local, uri, info)
    return _launch(ctx, "sft", rows, ctx.cfg.train.base_model)


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
    cfg = ctx.cfg
    init = model_path(cfg, "sft") or cfg.train.base_model
    return _launch(ctx, "grpo", grpo_prompts(ctx.store), init, think_prefix=cfg.prompts.think_prefix)


def recipe_text(path: str) -> str:
    """The recipe's contents (its hash input: an edited recipe retrains), or the path if unreadable."""
    try:
        return Path(path).read_text()
    except OSError:
        return path


SFT = Stage(
    name="sft",
    inputs=("split",),
    outputs=(),
    depends=lambda c: (c.train.base_model, c.train.sft, c.train.seed, recipe_text(c.train.sft.recipe)),
    body=_sft,
    done=_trained("sft"),
    doc="released sft split -> SFT checkpoint (TRL)",
)

GRPO = Stage(
    name="grpo",
    inputs=("sft",),
    outputs=(),
    depends=lambda c: (c.train.grpo, c.train.seed, c.prompts.think_prefix, recipe_text(c.train.grpo.recipe)),
    body=_grpo,
    done=_trained("grpo"),
    doc="rl + sft prompts -> GRPO checkpoint (TRL; format and accuracy rewards), from the SFT checkpoint",
)
