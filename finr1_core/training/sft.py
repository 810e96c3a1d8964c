"""Supervised fine-tuning with TRL's ``SFTTrainer`` from a recipe.

The model is loaded by the trainer (``model_init_kwargs``: bf16 on a GPU, fp32 on a CPU) with the
recipe's attention backend; rows become prompt/completion pairs (completion-only loss).
"""
from __future__ import annotations

from typing import Any, Sequence

from finr1_core.training.data import DataError, sft_examples
from finr1_core.training.recipes import Recipe, load_recipe
from finr1_core.training.runner import TrainResult, train_and_save, with_row_log


def build_sft_trainer(recipe: Recipe, rows: Sequence[dict]):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import get_peft_config

    examples = sft_examples(rows)
    if recipe.script.max_rows:
        examples = examples[: recipe.script.max_rows]
    if not examples:
        raise DataError("data error: conversation: no SFT rows with both a user and an assistant turn")
    tok = AutoTokenizer.from_pretrained(recipe.model.model_name_or_path, revision=recipe.model.model_revision)
    cls = sft_trainer_class(recipe, tok)
    trainer = cls(
        model=recipe.model.model_name_or_path,
        args=recipe.args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=get_peft_config(recipe.model),
    )
    return trainer, tok, len(examples)


def sft_trainer_class(recipe: Recipe, tok):
    """The trainer class finr1's SFT jobs run (the benchmarks time this one): TRL's ``SFTTrainer``,
    with the row log where the recipe asks for it."""
    from trl import SFTTrainer

    return with_row_log(SFTTrainer, tok) if recipe.script.log_rows else SFTTrainer


def train_sft(recipe: Recipe, rows: Sequence[dict], remote_uri: str | None = None) -> TrainResult:
    trainer, tok, n = build_sft_trainer(recipe, rows)
    return train_and_save("sft", trainer, tok, n, remote_uri, recipe.notes)


def run_sft(model_path: str | None, rows: Sequence[dict], output_dir: str, recipe: str | Any | None = None,
            overrides: dict | None = None, seed: int | None = None) -> TrainResult:
    """In-process SFT (tests, notebooks). ``recipe``: a recipe path or a ``TrainStageConfig``;
    jobs go through :func:`finr1_core.training.launch.train` instead."""
    path, ov = recipe_and_overrides("sft", recipe, overrides, model_path, seed)
    return train_sft(load_recipe("sft", path, ov, output_dir=output_dir), rows)


def recipe_and_overrides(method: str, recipe, overrides, model_path, seed) -> tuple[str, dict]:
    from finr1_core.config import REPO_ROOT

    if recipe is None:
        path, ov = str(REPO_ROOT / "configs" / "recipes" / "smollm2-135m" / f"{method}.yaml"), {}
    elif isinstance(recipe, str):
        path, ov = recipe, {}
    else:  # a TrainStageConfig of the pipeline config
        path, ov = recipe.recipe, dict(recipe.overrides)
    ov.update(overrides or {})
    if model_path:
        ov["model_name_or_path"] = model_path
    if seed is not None:
        ov.setdefault("seed", seed)
    return path, ov
