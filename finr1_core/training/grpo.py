"""GRPO with TRL's ``GRPOTrainer`` from a recipe: rewards named in the recipe, no reference model.

Prompts are rendered with the chat template and end with the forced ``<think>\\n``, so completions
continue the reasoning. Generation uses TRL's vLLM integration when the recipe says ``use_vllm``
(server mode: the launcher starts ``trl vllm-serve``), else the trainer's own generation.
"""
from __future__ import annotations

from typing import Callable, Sequence

from finr1_core.training.data import DataError, grpo_examples
from finr1_core.training.recipes import Recipe, RecipeError, load_recipe
from finr1_core.training.rewards import get_rewards
from finr1_core.training.runner import TrainResult, time_budget_callback, train_and_save, with_row_log
from finr1_core.training.sft import recipe_and_overrides


def fix_static_cache_length(args, tok, examples: list[dict]) -> int:
    """Size the static KV cache once, for the longest prompt plus the completion cap.

    A static cache sized per call (prompt length + ``max_completion_length``) changes shape with every
    new prompt length, and each new shape recompiles the compiled decode (about 40 s at 0.5B on an
    H200). One fixed ``max_cache_len`` compiles once per run."""
    longest = max(len(tok(e["prompt"], add_special_tokens=False)["input_ids"]) for e in examples)
    n = longest + int(args.max_completion_length)
    args.generation_kwargs = {**(args.generation_kwargs or {}), "max_cache_len": n}
    print(f"grpo: static KV cache of {n} tokens (longest prompt {longest} + max_completion_length {args.max_completion_length})", flush=True)
    return n


def build_grpo_trainer(recipe: Recipe, rows: Sequence[dict], reward_funcs: Sequence[Callable] | None = None):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer, get_peft_config

    tok = AutoTokenizer.from_pretrained(recipe.model.model_name_or_path, revision=recipe.model.model_revision)
    examples = grpo_examples(list(rows), tok, recipe.script.think_prefix)
    cap = recipe.script.max_prompt_tokens
    if cap:
        kept = [e for e in examples if len(tok(e["prompt"], add_special_tokens=False)["input_ids"]) <= cap]
        print(f"grpo: {len(examples) - len(kept)} of {len(examples)} prompts are longer than max_prompt_tokens={cap} and are left out", flush=True)
        examples = kept
    examples = examples[: recipe.script.max_rows] if recipe.script.max_rows else examples
    if not examples:
        raise DataError("data error: messages: GRPO has no prompts")
    funcs = list(reward_funcs) if reward_funcs else get_rewards(recipe.script.reward_funcs)
    weights = recipe.args.reward_weights
    if reward_funcs and weights is not None and len(weights) != len(funcs):
        recipe.args.reward_weights = None  # the caller replaced the recipe's rewards: equal weights
    elif weights is not None and len(weights) != len(funcs):
        raise RecipeError(f"recipe error: reward_weights: {len(weights)} weights for {len(funcs)} reward_funcs")
    if recipe.args.cache_implementation == "static":
        fix_static_cache_length(recipe.args, tok, examples)
    cls = with_row_log(GRPOTrainer, tok) if recipe.script.log_rows else GRPOTrainer
    trainer = cls(
        model=recipe.model.model_name_or_path,
        reward_funcs=funcs,
        args=recipe.args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        peft_config=get_peft_config(recipe.model),
    )
    if recipe.script.max_minutes:
        trainer.add_callback(time_budget_callback(recipe.script.max_minutes))
    if recipe.script.generation_fallback == "compiled" and recipe.args.cache_implementation == "static":
        trainer.generation_config.disable_compile = False  # TRL turns transformers' compiled decode off
    return trainer, tok, len(examples)


def train_grpo(recipe: Recipe, rows: Sequence[dict], remote_uri: str | None = None, reward_funcs=None) -> TrainResult:
    trainer, tok, n = build_grpo_trainer(recipe, rows, reward_funcs)
    return train_and_save("grpo", trainer, tok, n, remote_uri, recipe.notes)


def run_grpo(model_path: str | None, rows: Sequence[dict], output_dir: str, recipe=None, overrides: dict | None = None,
             seed: int | None = None, reward_funcs: Sequence[Callable] | None = None,
             think_prefix: str | None = None) -> TrainResult:
    """In-process GRPO (tests, notebooks); ``reward_funcs`` replaces the recipe's rewards."""
    path, ov = recipe_and_overrides("grpo", recipe, overrides, model_path, seed)
    if think_prefix is not None:
        ov.setdefault("think_prefix", think_prefix)
    return train_grpo(load_recipe("grpo", path, ov, output_dir=output_dir), rows, reward_funcs=reward_funcs)
