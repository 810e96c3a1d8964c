"""Training: SFT with TRL's ``SFTTrainer`` and GRPO with TRL's ``GRPOTrainer``, from TRL recipes.

- ``recipes``: YAML recipes parsed with ``trl.TrlParser`` (ModelConfig + SFTConfig/GRPOConfig +
  :class:`~finr1_core.training.recipes.ScriptArguments`), adapted to the machine (``device``).
- ``data``: released folder / Parquet / hub id -> TRL examples. ``rewards``: the reward registry.
- ``sft`` / ``grpo``: build the trainer and train (in process: ``run_sft`` / ``run_grpo``).
- ``launch.train``: the training job (``accelerate launch`` or Ray Train), streamed line by line;
  what the pipeline stage and ``finr1 train`` call.
- ``checkpoints``: resume from the last complete checkpoint; ``s3://`` outputs synced with fsspec.
- ``tracking``: progress lines, reward-variance statistics, the loss/reward/lr plot.
"""
from finr1_core.training.data import DataError, grpo_examples, sft_examples
from finr1_core.training.grpo import run_grpo
from finr1_core.training.recipes import RecipeError, load_recipe
from finr1_core.training.rewards import REWARDS, accuracy_reward, accuracy_reward_value, format_reward, format_reward_value
from finr1_core.training.runner import TrainResult
from finr1_core.training.sft import run_sft

__all__ = [
    "DataError", "RecipeError", "REWARDS", "TrainResult", "accuracy_reward", "accuracy_reward_value", "format_reward",
    "format_reward_value", "grpo_examples", "load_recipe", "run_grpo", "run_sft", "sft_examples",
]
