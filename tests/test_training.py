"""TRL training on the real embedded model: rewards, SFT and GRPO learning.

GRPO's gradient is zero when every completion of a prompt gets the same reward (DESIGN.md
section 4), so the learning test uses a reward that varies with the completion.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from finr1_core.config import GRPOConfig, SFTConfig, embedded_model_dir
from finr1_core.training import (
    accuracy_reward,
    format_reward,
    format_reward_value,
    grpo_examples,
    run_grpo,
    run_sft,
    sft_examples,
)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("step 1 … step 3\n</think>\n\nThe answer is \\boxed{24}", 1.0),
        ("reasoning\n</think>\n\n24", 0.75),
        ("reasoning\n</think>\n\n", 0.5),
        ("no close but \\boxed{3}", 0.25),
        ("nothing at all", 0.0),
        ("<think>\nreopened</think>\n\\boxed{1}", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward_value(completion) == expected
    assert format_reward([completion]) == [expected]


def test_accuracy_reward_never_pays_for_unparseable_gold():
    comps = ["r\n</think>\n\n\\boxed{24}", "r\n</think>\n\n\\boxed{25}", "r\n</think>\n\n\\boxed{24}", "r\n</think>\n\n\\boxed{B}"]
    golds = ["24", "24", None, "B"]
    types = ["numeric", "numeric", "numeric", "mcq_single"]
    assert accuracy_reward(comps, answer=golds, answer_type=types) == [1.0, 0.0, 0.0, 1.0]
    assert accuracy_reward(["r\n</think>\n\n\\boxed{24}"], answer=[""], answer_type=[None]) == [0.0]
    # chat-style completions (lists of messages) are read too
    assert accuracy_reward([[{"role": "assistant", "content": "x</think>\\boxed{0.2}"}]], answer=["20%"], answer_type=["numeric"]) == [1.0]


def test_conversation_maps_to_prompt_completion():
    rows = [{"conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\na"}]},
            {"conversation": [{"role": "user", "content": "only a question"}]}]
    ex = sft_examples(rows)
    assert ex == [{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "<think>\nr\n</think>\n\na"}]}]


def _max_diff(a: str, b: str) -> float:
    wa, wb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def test_sft_then_grpo_learn(tmp_path):
    base = str(embedded_model_dir())
    conv = [{"role": "user", "content": "What is 12% of 200?"},
            {"role": "assistant", "content": "<think>\n0.12 × 200 = 24.\n</think>\n\n\\boxed{24}"}]
    sft = run_sft(base, [{"conversation": conv}] * 4, str(tmp_path / "sft"), SFTConfig(max_steps=2, per_device_batch_size=2))
    assert sft.steps == 2 and sft.train_loss > 0
    assert _max_diff(sft.output_dir, base) > 0

    from transformers import AutoTokenizer

    rows = [{"messages": [{"role": "user", "content": "What is 12% of 200? Put the answer in \\boxed{}."}], "answer": "24", "answer_type": "numeric"},
            {"messages": [{"role": "user", "content": "净利润100万元，收入500万元，净利率是多少？"}], "answer": "0.2", "answer_type": "numeric"}]
    tok = AutoTokenizer.from_pretrained(base)
    ex = grpo_examples(rows, tok)
    assert all(e["prompt"].endswith("<|im_start|>assistant\n<think>\n") for e in ex)

    def shorter_is_better(completions, **kw):  # varies across the group, so the gradient is not zero
        return [-len(c) / 100.0 for c in completions]

    cfg = GRPOConfig(max_steps=1, num_generations=4, per_device_batch_size=4, max_completion_length=24, temperature=1.0)
    grpo = run_grpo(sft.output_dir, rows, str(tmp_path / "grpo"), cfg, reward_funcs=[shorter_is_better])
    logs = [e for e in grpo.log_history if "reward_std" in e]
    assert logs and float(logs[0]["reward_std"]) > 0
    assert _max_diff(grpo.output_dir, sft.output_dir) > 0  # GRPO moved the weights
