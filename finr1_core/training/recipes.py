"""Training recipes: TRL-style YAML files parsed with TRL's own parser.

A recipe is one flat YAML mapping holding ``model_name_or_path`` and the other fields of TRL's
``ModelConfig`` (dtype, attention backend, LoRA), every field of TRL's ``SFTConfig`` or
``GRPOConfig``, and the few fields of :class:`ScriptArguments` (dataset, reward names). It is
read by ``trl.TrlParser``, so no TRL option is out of reach. ``${EMBEDDED_MODEL}`` and
``${REPO}`` are expanded as in the pipeline config. Overrides (``--set key=value``) are parsed by
the same parser, exactly as command-line flags of TRL's own scripts.

Any problem is a :class:`RecipeError` rendered as one line naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finr1_core.config import REPO_ROOT, expand_tokens, read_yaml_mapping

METHODS = ("sft", "grpo")


class RecipeError(ValueError):
    """A recipe problem, always one line naming the field."""


@dataclass
class ScriptArguments:
    """What a recipe holds besides TRL's ``ModelConfig`` and ``SFTConfig``/``GRPOConfig``."""

    dataset: str | None = field(default=None, metadata={"help": "Released dataset folder, Parquet path or hub id"})
    dataset_split: str | None = field(default=None, metadata={"help": "Split of a released folder (default: sft for SFT, rl+sft for GRPO)"})
    max_rows: int | None = field(default=None, metadata={"help": "Cap on training rows (GRPO: prompts)"})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "GRPO: leave out prompts longer than this (said in the log)"})
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "accuracy"], metadata={"help": "Reward names from the registry"})
    think_prefix: str = field(default="<think>\n", metadata={"help": "Forced start of every GRPO completion"})
    generation_fallback: str = field(default="generate", metadata={"help": "GRPO generation without vLLM on a GPU: generate | compiled (static cache, compiled decode) | paged"})
    max_minutes: float | None = field(default=None, metadata={"help": "Stop training after this many minutes, at a step boundary (the model is saved as usual)"})
    log_rows: bool = field(default=False, metadata={"help": "Write the rows each rank trained on to <output>/rows_seen/"})


def make_parser(types):
    """``trl.TrlParser`` whose errors raise :class:`RecipeError` instead of exiting the process."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # argparse calls this instead of raising
            raise RecipeError(f"recipe error: {message}")

        def exit(self, status=0, message=None):
            raise RecipeError(f"recipe error: {(message or '').strip() or 'invalid arguments'}")

    return Parser(types)


def config_classes(method: str) -> tuple[type, type, type]:
    from trl import GRPOConfig, ModelConfig, SFTConfig

    if method not in METHODS:
        raise RecipeError(f"recipe error: method: must be one of {', '.join(METHODS)} (got {method!r})")
    return ScriptArguments, (SFTConfig if method == "sft" else GRPOConfig), ModelConfig


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    return expand_tokens(read_yaml_mapping(p, path, RecipeError, "recipe error"))


def override_args(overrides: dict[str, Any] | None) -> list[str]:
    """``{key: value}`` -> CLI flags for TRL's parser (lists become several values)."""
    out: list[str] = []
    for k, v in (overrides or {}).items():
        out.append(f"--{k}")
        if isinstance(v, (list, tuple)):
            out += [str(x) for x in v]
        elif isinstance(v, dict):
            import json

            out.append(json.dumps(v))
        else:
            out.append(str(v))
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` (the CLI's ``--set``) -> a dict (``k=[a, b]`` gives a list); a bad item is a one-line error."""
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise RecipeError(f"recipe error: --set {it!r}: expected key=value")
        k, v = it.split("=", 1)
        try:
            parsed = yaml.safe_load(v)
        except yaml.YAMLError:
            parsed = v
        out[k.strip()] = parsed if isinstance(parsed, list) else v
    return out


@dataclass
class Recipe:
    script: ScriptArguments
    args: Any  # trl.SFTConfig | trl.GRPOConfig
    model: Any  # trl.ModelConfig
    notes: list[str]  # what was adapted to this machine


def load_recipe(method: str, path: str | Path, overrides: dict[str, Any] | None = None, output_dir: str | None = None,
                cuda: bool | None = None) -> Recipe:
    """Parse a recipe file (adapted to this machine, then ``overrides``) with TRL's parser."""
    from finr1_core.training.device import adapt_to_device

    types = config_classes(method)
    raw = read_yaml(path)
    raw.pop("env", None)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    raw.setdefault("output_dir", "trainer_output")
    for k, v in (overrides or {}).items():  # overrides that steer the adaptation (dtype, attention)
        if k in ("dtype", "attn_implementation", "use_vllm", "generation_fallback", "padding_free", "packing"):
            raw[k] = v
    notes = adapt_to_device(raw, method, cuda=cuda)
    parser = make_parser(list(types))
    unknown = parser.set_defaults_with_config(**raw)
    if unknown:
        raise RecipeError(f"recipe error: {path}: {unknown[0].lstrip('-')}: unknown key for {method}")
    known = {a.dest for a in parser._actions}
    for k in overrides or {}:
        if k.replace("-", "_") not in known:
            raise RecipeError(f"recipe error: --set {k}: unknown key for {method}")
    try:
        script, args, model = parser.parse_args_into_dataclasses(args=override_args(overrides))
    except RecipeError as e:
        raise RecipeError(f"{e} (in {path})") from None
    except (ValueError, TypeError) as e:
        raise RecipeError(f"recipe error: {path}: {str(e).strip().splitlines()[0]}") from None
    return Recipe(script, args, model, notes)
