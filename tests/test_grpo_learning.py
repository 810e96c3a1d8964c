"""GRPO learns in the right direction: a few seeded steps on TFNS rows with the real accuracy reward.

The rows come from the repository's TFNS sample through the TFNS loader and the eval's prompt
builder; the recipe is the benchmark's (``configs/recipes/smollm2-135m/grpo-tfns.yaml``). Every
completion the trainer samples is recorded with its reward. After training, the policy's mean
log-probability of the rewarded completions must have risen relative to the unrewarded ones of the
same prompts. A wrong advantage sign, a reward that does not reach the loss, or a prompt that differs
from the one the completions were sampled for all fail it (with the reward's sign flipped the margin
falls instead; see ``test_flipped_reward_moves_the_other_way``).
"""
from __future__ import annotations

import pytest

from finr1_core.config import REPO_ROOT, embedded_model_dir
from finr1_core.prompts import build_prompt
from finr1_core.sources import load_source
from finr1_core.training import run_grpo
from finr1_core.training.rewards import accuracy_reward

RECIPE = str(REPO_ROOT / "configs" / "recipes" / "smollm2-135m" / "grpo-tfns.yaml")
# 2 steps x 2 prompts x 8 generations (step 1 has no spread with this seed, step 2 does); a higher learning rate than the recipe's so that one step moves it
OVERRIDES = {"max_steps": 2, "learning_rate": 1e-4, "warmup_steps": 0, "max_minutes": 10, "seed": 0, "report_to": "none",
             "max_completion_length": 16}


def tfns_rows(n: int) -> list[dict]:
    res = load_source("tfns", path=str(REPO_ROOT / "data" / "samples" / "tfns"))
    return [{"messages": build_prompt(r)["messages"], "answer": r["answer"], "answer_type": r["answer_type"]} for r in res.records[:n]]


def mean_logprobs(model_dir: str, pairs: list[tuple[str, str]]) -> list[float]:
    """Mean per-token log-probability of each completion after its prompt (the policy's, no sampling)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, completion in pairs:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(ids).logits[0, len(p) - 1:-1].float(), -1)
            out.append(float(logp.gather(1, torch.tensor(c)[:, None]).mean()))
    return out


def train_and_margin(tmp_path, sign: float) -> tuple[float, float, list[float]]:
    seen: list[tuple[str, str, float]] = []

    def recorded_accuracy(completions, prompts=None, **kw):
        r = accuracy_reward(completions, **kw)
        seen.extend(zip(prompts, completions, r))
        return [sign * x for x in r]

    res = run_grpo(str(embedded_model_dir()), tfns_rows(6), str(tmp_path / "grpo"), recipe=RECIPE, overrides=OVERRIDES,
                   reward_funcs=[recorded_accuracy])
    assert res.steps == OVERRIDES["max_steps"]
    stds = [float(e["reward_std"]) for e in res.log_history if "reward_std" in e]
    # only prompts whose group had a spread carry a gradient; compare within those
    groups: dict[str, list[tuple[str, float]]] = {}
    for p, c, r in seen:
        groups.setdefault(p, []).append((c, r))
    pairs, labels = [], []
    for p, items in groups.items():
        if len({r for _, r in items}) > 1:
            for c, r in items:
                pairs.append((p, c))
                labels.append(r)
    assert pairs, f"no group had a reward spread (reward std per step {stds})"

    def margin(lps):
        good = [x for x, y in zip(lps, labels) if y > 0]
        bad = [x for x, y in zip(lps, labels) if y == 0]
        return sum(good) / len(good) - sum(bad) / len(bad)

    before, after = margin(mean_logprobs(str(embedded_model_dir()), pairs)), margin(mean_logprobs(res.output_dir, pairs))
    print(f"sign {sign:+}: {len(pairs)} completions in groups with a spread; margin {before:.3f} -> {after:.3f}; reward std {stds}")
    return before, after, stds


def test_grpo_raises_the_logprob_of_rewarded_completions(tmp_path):
    before, after, stds = train_and_margin(tmp_path, 1.0)
    assert any(s > 0 for s in stds)
    assert after > before + 0.05, f"rewarded-minus-unrewarded log-prob margin {before:.3f} -> {after:.3f}"


@pytest.mark.heavy
def test_flipped_reward_moves_the_other_way(tmp_path):
    """The check above can fail: with the reward's sign flipped, the margin falls."""
    before, after, _ = train_and_margin(tmp_path, -1.0)
    assert after < before - 0.05, f"margin {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("prefix", ["", "<think>\n"])
def test_accuracy_reward_is_what_the_eval_counts(prefix):
    """The reward and ``finr1 eval`` score the same text the same way (the reward extracted first and
    paid 0 for a bare label that the eval counts correct)."""
    from finr1_core.verify import verify

    comps = ["Neutral", "Bearish", "The sentiment is **Neutral**", "The sentiment of this financial tweet is Neutral."]
    got = accuracy_reward(comps, answer=["Neutral"] * 4, answer_type=["label"] * 4, think_prefix=[prefix] * 4)
    assert got == [1.0 if verify("Neutral", prefix + c, "label").verdict == "correct" else 0.0 for c in comps]
    assert got[:3] == [1.0, 0.0, 1.0]
