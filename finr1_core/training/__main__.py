"""Training entry point, run by the launcher in every process (never imports the pipeline)::

    python -m finr1_core.training sft|grpo --recipe FILE --data URI --output URI [--set key=value ...]
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The entry point's arguments (tests/test_docs.py parses the documented command lines with it)."""
    ap = argparse.ArgumentParser(prog="python -m finr1_core.training")
    ap.add_argument("method", choices=["sft", "grpo"])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", default=None, help="released dataset folder, Parquet path or hub id (default: the recipe's dataset)")
    ap.add_argument("--output", required=True, help="local folder or s3:// URI; a re-run resumes from its last checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a = build_parser().parse_args(argv)

    from finr1_core.training import checkpoints, data, recipes

    try:
        overrides = recipes.parse_set(a.set)
        local = checkpoints.local_dir(a.output)
        recipe = recipes.load_recipe(a.method, a.recipe, overrides, output_dir=str(local))
        rows = data.load_rows(a.data or recipe.script.dataset, a.method, recipe.script.dataset_split)
        remote = a.output if checkpoints.is_remote(a.output) else None
        if remote and _is_main():
            local.mkdir(parents=True, exist_ok=True)
            checkpoints.pull_checkpoints(a.output, local)
        _barrier()
        for n in recipe.notes:
            print(f"finr1-train adapted {n}", flush=True)
        if a.method == "sft":
            from finr1_core.training.sft import train_sft

            train_sft(recipe, rows, remote)
        else:
            from finr1_core.training.grpo import train_grpo

            train_grpo(recipe, rows, remote)
    except (recipes.RecipeError, data.DataError) as e:
        print(f"finr1-train error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    """Wait for rank 0's checkpoint download before any rank looks for a checkpoint."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


if __name__ == "__main__":
    sys.exit(main())
