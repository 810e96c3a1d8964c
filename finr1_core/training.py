"""Training: SFT with TRL's ``SFTTrainer``, then GRPO with TRL's ``GRPOTrainer``.

- SFT trains on the SFT route as prompt/completion pairs (completion-only loss). The released
  ``conversation`` column maps onto this directly: user turn -> prompt, assistant turn ->
  completion (DESIGN.md section 4: a column named ``conversation`` fails in TRL, and
  ``assistant_only_loss`` fails with this chat template).
- GRPO trains on prompts from both routes with two rewards, as Fin-R1 did: a format reward and
  an accuracy reward, and no reference model (``beta=0``). Prompts are rendered with the chat
  template and end with the forced ``<think>\\n``, so completions continue the reasoning.
- Production runs the same code under ``accelerate launch`` with DeepSpeed ZeRO-3
  (``infra/accelerate/``): ``python -m finr1_core.training sft|grpo --config ... --run-id ...``.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finr1_core.config import GRPOConfig as GRPOSettings
from finr1_core.config import SFTConfig as SFTSettings

THINK_CLOSE = "</think>"
_BOXED = re.compile(r"\\boxed\{")


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    train_loss: float | None
    rows: int
    seconds: float
    log_history: list


# ----------------------------------------------------------------------------- rewards
def format_reward_value(completion: str) -> float:
    """Fin-R1 format reward, graded so that small models get a signal.

    The prompt already ends with ``<think>\\n``. Full credit (1.0) needs the reasoning closed with
    ``</think>`` followed by a non-empty answer that holds a ``\\boxed{}``. Partial credit: 0.5
    for a closed think block, +0.25 for a non-empty answer after it, +0.25 for a boxed answer.
    A completion that reopens ``<think>`` gets 0.
    """
    if "<think>" in completion:
        return 0.0
    score = 0.0
    if THINK_CLOSE in completion:
        score += 0.5
        answer = completion.split(THINK_CLOSE, 1)[1].strip()
        if answer:
            score += 0.25
        if _BOXED.search(answer):
            score += 0.25
    elif _BOXED.search(completion):
        score += 0.25
    return score


def accuracy_reward_value(completion: str, gold: str | None, answer_type: str | None) -> float:
    """1.0 when the rule verifier says correct; 0.0 otherwise, including an unparseable gold
    (open-r1's early reward scored those 1.0; never do that)."""
    from finr1_core.extract import extract_answer
    from finr1_core.verify import verify

    if gold is None or str(gold).strip() == "":
        return 0.0
    text = "<think>\n" + completion
    pred = extract_answer(text)
    if pred is None:
        return 0.0
    return 1.0 if verify(gold, pred, answer_type).verdict == "correct" else 0.0


def _completion_text(c) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return c[-1].get("content", "")
    return str(c)


def format_reward(completions, **kwargs) -> list[float]:
    return [format_reward_value(_completion_text(c)) for c in completions]


def accuracy_reward(completions, answer=None, answer_type=None, **kwargs) -> list[float]:
    n = len(completions)
    answer = answer or [None] * n
    answer_type = answer_type or [None] * n
    return [accuracy_reward_value(_completion_text(c), g, t) for c, g, t in zip(completions, answer, answer_type)]


# ----------------------------------------------------------------------------- data
def sft_examples(rows: Sequence[dict]) -> list[dict]:
    """Released rows (``conversation``) -> TRL prompt/completion pairs."""
    out = []
    for r in rows:
        conv = r["conversation"]
        if isinstance(conv, str):
            conv = json.loads(conv)
        user = [m for m in conv if m["role"] == "user"]
        asst = [m for m in conv if m["role"] == "assistant"]
        if not user or not asst:
            continue
        out.append({"prompt": [dict(user[0])], "completion": [dict(asst[-1])]})
    return out


def grpo_examples(rows: Sequence[dict], tokenizer, think_prefix: str = "<think>\n") -> list[dict]:
    """Prompt rows (messages + gold) -> GRPO string prompts ending with the forced prefix."""
    out = []
    for r in rows:
        msgs = r["messages"]
        if isinstance(msgs, str):
            msgs = json.loads(msgs)
        prompt = tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=True) + think_prefix
        out.append({"prompt": prompt, "answer": r.get("answer"), "answer_type": r.get("answer_type")})
    return out


# ----------------------------------------------------------------------------- trainers
def _common_args(cfg, output_dir: str, seed: int) -> dict:
    import torch

    args = dict(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_batch_size,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=bool(cfg.bf16 and torch.cuda.is_available()),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    if cfg.deepspeed:
        args["deepspeed"] = cfg.deepspeed
    return args


def run_sft(model_path: str, rows: Sequence[dict], output_dir: str, cfg: SFTSettings, seed: int = 0) -> TrainResult:
    """Supervised fine-tuning on released SFT rows. Saves a full checkpoint to ``output_dir``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    examples = sft_examples(rows)
    if not examples:
        raise ValueError("SFT has no training rows: the SFT route is empty")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    args = SFTConfig(
        **_common_args(cfg, output_dir, seed),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    out = trainer.train()
    _save(trainer, tok, output_dir)
    return TrainResult(output_dir, out.global_step, out.training_loss, len(examples), time.time() - t0, trainer.state.log_history)


def run_grpo(model_path: str, rows: Sequence[dict], output_dir: str, cfg: GRPOSettings, seed: int = 0, think_prefix: str = "<think>\n", reward_funcs=None) -> TrainResult:
    """GRPO with format + accuracy rewards (Fin-R1) and no reference model (beta=0 by default).

    ``reward_funcs`` replaces the two rewards (TRL's reward-function signature).
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(model_path)
    examples = grpo_examples(list(rows)[: cfg.max_prompts], tok, think_prefix)
    if not examples:
        raise ValueError("GRPO has no prompts")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    args = GRPOConfig(
        **_common_args(cfg, output_dir, seed),
        num_generations=cfg.num_generations,
        generation_batch_size=max(cfg.per_device_batch_size, cfg.num_generations),
        max_completion_length=cfg.max_completion_length,
        beta=cfg.beta,
        temperature=cfg.temperature,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs or [format_reward, accuracy_reward]),
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
    )
    out = trainer.train()
    _save(trainer, tok, output_dir)
    return TrainResult(output_dir, out.global_step, out.training_loss, len(examples), time.time() - t0, trainer.state.log_history)


def _save(trainer, tok, output_dir: str) -> None:
    trainer.save_model(output_dir)
    tok.save_pretrained(output_dir)
    gen = Path(output_dir) / "generation_config.json"
    if gen.exists():  # keep sampling on, so the server honours temperature
        g = json.loads(gen.read_text())
        g["do_sample"] = True
        gen.write_text(json.dumps(g, indent=2))
    for p in Path(output_dir).glob("checkpoint-*"):
        import shutil

        shutil.rmtree(p, ignore_errors=True)
