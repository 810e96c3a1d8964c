"""GRPO with TRL's ``GRPOTrainer`` from a recipe: rewards named in the recipe, no reference model.

Prompts are rendered with the chat template and end with the forced ``<think>\\n``, so completions
continue the reasoning. Generation uses TRL's vLLM integration when the recipe says ``use_vllm``
(server mode: the launcher starts ``trl vllm-serve``), else the trainer's own generation.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def deferred_stop_check():
    """transformers' decode loop, reading its stop flag one step late on CUDA too.

    Each decode step ends with ``bool(unfinished_sequences.max() == 0)``: the host waits for the
    device, so the device then idles while the host prepares the next step (mask, logits processors,
    sampling, cudagraph replay). transformers' ``DeferredStopCheck`` copies the flag asynchronously and
    reads it a step later, undoing the one extra step, but is switched on for ``mps`` only."""
    from transformers.generation import utils as gen_utils

    cls = getattr(gen_utils, "DeferredStopCheck", None)
    if cls is None:
        yield False
        return
    orig = cls.__dict__["is_supported"]

    def is_supported(device, cache, cache_is_returned, is_assistant):
        if is_assistant:
            return False
        return cache is None or cache.is_croppable or not cache_is_returned

    cls.is_supported = staticmethod(is_supported)
    try:
        yield True
    finally:
        cls.is_supported = orig


def compiled_generation(trainer_cls):
    """``trainer_cls`` whose own generation (vLLM off) suits a compiled, static-cache decode.

    - The input-embedding hook that gradient checkpointing adds (``make_inputs_require_grads``:
      ``output.requires_grad_()``) is removed while generating. Dynamo cannot trace it: every decode
      step broke into a dozen compiled pieces with Python between them. TRL turns gradient
      checkpointing off and on around each generation and the re-enable registers one more hook each
      time (without removing the last), so the hooks also piled up, one per step.
    - The decode loop reads its stop flag one step late (:func:`deferred_stop_check`), so the host
      queues the next step while the device runs this one.
    """

    class CompiledGeneration(trainer_cls):
        remove_input_grad_hooks = True
        defer_stop_check = True

        def _generate_single_turn(self, *args, **kwargs):
            model = self.accelerator.unwrap_model(self.model_wrapped)
            hooks = bool(getattr(model, "_require_grads_hooks", None)) and self.remove_input_grad_hooks
            if hooks:
                model.disable_input_require_grads()
            try:
                with deferred_stop_check() if self.defer_stop_check else contextlib.nullcontext():
                    return super()._generate_single_turn(*args, **kwargs)
            finally:
                if hooks and not getattr(model, "_require_grads_hooks", None):
                    model.enable_input_require_grads()  # TRL re-enables checkpointing (and the hook) itself when it is on

    CompiledGeneration.__name__ = CompiledGeneration.__qualname__ = trainer_cls.__name__
    return CompiledGeneration


def attention_without_cudnn() -> bool:
    """Keep PyTorch's SDPA off its cuDNN backend in a GRPO job (CUDA only); returns whether it changed.

    GRPO's batches change length every step (prompts padded to the longest of the step, completions
    stopping early), and cuDNN builds a new attention graph for every new shape, forward and backward
    (hundreds of ms each on the host). On an H200 (torch 2.11, 0.5B, 4 x 8 sequences) the training
    part of a step took 0.8-2.3 s of wall time around about 0.4 s of GPU work, and about 0.75 s with
    the memory-efficient kernel, which SDPA picks next for a padding mask and which needs no
    per-shape build (``benchmarks/results/train_profile_grpo_h200.md``). Both generation fallbacks
    get it: the ``generate`` baseline trains the same way."""
    import torch

    if not torch.cuda.is_available() or not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    return True


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
    compiled = recipe.script.generation_fallback == "compiled" and recipe.args.cache_implementation == "static"
    if compiled:
        cls = compiled_generation(cls)
    if not recipe.args.use_vllm and attention_without_cudnn():
        print("grpo: SDPA's cuDNN backend off (it builds a graph per new sequence length; GRPO's lengths change every step)", flush=True)
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
    if compiled:
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
