"""GRPO rewards and their registry: recipes name rewards (``reward_funcs: [format, accuracy]``).

Each reward has TRL's reward-function signature: ``f(completions, **columns) -> list[float]``.
"""
from __future__ import annotations

import re
from typing import Callable

THINK_CLOSE = "</think>"
_BOXED = re.compile(r"\\boxed\{")


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


def accuracy_reward_value(completion: str, gold: str | None, answer_type: str | None, think_prefix: str = "<think>\n") -> float:
    """1.0 when the rule verifier says correct; 0.0 otherwise, including an unparseable gold
    (open-r1's early reward scored those 1.0; never do that).

    The completion is scored exactly as ``finr1 eval`` scores an output: ``verify(gold, prefix +
    completion, answer_type)``, with the same forced prefix. Extracting first (boxed or answer
    phrase only) paid 0 for a bare ``Neutral`` that the eval counts correct, so what GRPO
    rewarded was not what the eval measures. One call of the verifier per completion: the
    verifier bounds its own time, so one pathological answer cannot stall a step."""
    from finr1_core.verify import verify

    if gold is None or str(gold).strip() == "":
        return 0.0
    try:
        return 1.0 if verify(gold, (think_prefix or "") + completion, answer_type).verdict == "correct" else 0.0
    except Exception:  # a verifier failure on one completion scores it 0, never stops the step
        return 0.0


def completion_text(c) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return c[-1].get("content", "")
    return str(c)


def format_reward(completions, **kwargs) -> list[float]:
    return [format_reward_value(completion_text(c)) for c in completions]


def accuracy_reward(completions, answer=None, answer_type=None, think_prefix=None, **kwargs) -> list[float]:
    """``think_prefix`` is the dataset column :func:`finr1_core.training.data.grpo_examples` writes
    (the prefix the prompt ended with); without it, Fin-R1's ``<think>\n``."""
    n = len(completions)
    answer = answer or [None] * n
    answer_type = answer_type or [None] * n
    prefixes = think_prefix or ["<think>\n"] * n
    return [accuracy_reward_value(completion_text(c), g, t, p) for c, g, t, p in zip(completions, answer, answer_type, prefixes)]


_STEP = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Then,|Finally,|So,|Therefore)", re.MULTILINE)


def reasoning_steps_value(completion: str) -> float:
    """open-r1's graded reasoning-structure reward: step markers counted, 3 or more give 1.0.

    It varies within a group even when no completion of a small model closes its think block, so
    the embedded GRPO demo gets a non-zero gradient."""
    return min(1.0, len(_STEP.findall(completion)) / 3)


def reasoning_steps_reward(completions, **kwargs) -> list[float]:
    return [reasoning_steps_value(completion_text(c)) for c in completions]


REWARDS: dict[str, Callable] = {"format": format_reward, "accuracy": accuracy_reward, "reasoning_steps": reasoning_steps_reward}


def get_rewards(names: list[str]) -> list[Callable]:
    """Registry lookup; an unknown name is a one-line error listing the known ones."""
    from finr1_core.training.recipes import RecipeError

    if not names:
        raise RecipeError("recipe error: reward_funcs: at least one reward is needed for GRPO")
    bad = [n for n in names if n not in REWARDS]
    if bad:
        raise RecipeError(f"recipe error: reward_funcs: unknown reward {bad[0]!r} (known: {', '.join(sorted(REWARDS))})")
    return [REWARDS[n] for n in names]
