"""TRL training on the real embedded model: rewards, SFT and GRPO learning.

GRPO's gradient is zero when every completion of a prompt gets the same reward, so the learning
test uses a reward that varies with the completion.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from finr1_core.config import embedded_model_dir
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
    sft = run_sft(base, [{"conversation": conv}] * 4, str(tmp_path / "sft"), overrides={"max_steps": 2, "per_device_train_batch_size": 2})
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

    ov = {"max_steps": 1, "num_generations": 4, "per_device_train_batch_size": 4, "max_completion_length": 24, "temperature": 1.0}
    grpo = run_grpo(sft.output_dir, rows, str(tmp_path / "grpo"), overrides=ov, reward_funcs=[shorter_is_better])
    logs = [e for e in grpo.log_history if "reward_std" in e]
    assert logs and float(logs[0]["reward_std"]) > 0
    assert _max_diff(grpo.output_dir, sft.output_dir) > 0  # GRPO moved the weights
    assert grpo.reward["reward_steps"] == 1 and grpo.reward["zero_reward_std_steps"] == 0
    assert Path(grpo.plot).stat().st_size > 1000 and (Path(grpo.output_dir) / "train_result.json").exists()
    assert list((Path(sft.output_dir) / "runs").rglob("events.out.tfevents.*"))  # TensorBoard by default


# ----------------------------------------------------------------------------- recipes
from finr1_core.config import REPO_ROOT  # noqa: E402
from finr1_core.training import RecipeError, load_recipe  # noqa: E402
from finr1_core.training.rewards import get_rewards  # noqa: E402

RECIPES = REPO_ROOT / "configs" / "recipes"


@pytest.mark.parametrize("method", ["sft", "grpo"])
@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-7b-instruct"])
def test_shipped_recipes_parse_with_trl(method, model):
    r = load_recipe(method, RECIPES / model / f"{method}.yaml", {"max_steps": 7}, output_dir="/tmp/x", cuda=False)
    assert r.args.max_steps == 7 and r.args.output_dir == "/tmp/x"
    assert r.args.bf16 is False and r.args.model_init_kwargs["dtype"] == "float32"  # CPU: fp32, same code
    assert r.args.save_strategy == "steps" and "tensorboard" in r.args.report_to
    if model.startswith("qwen"):
        assert r.model.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct"
        assert "use_liger_kernel: True -> False (no GPU)" in " ".join(r.notes)
    if method == "grpo":
        names = [f.__name__ for f in get_rewards(r.script.reward_funcs)]
        assert names[:2] == ["format_reward", "accuracy_reward"] and len(r.args.reward_weights) == len(names)
        if model.startswith("smollm2"):  # graded so the 135M model's groups get a reward spread
            assert names[2] == "reasoning_steps_reward"
        assert r.args.beta == 0.0


def test_production_recipe_on_gpu_keeps_fast_settings(monkeypatch):
    from finr1_core.training.device import adapt_to_device
    from finr1_core.training.recipes import read_yaml

    raw = read_yaml(RECIPES / "qwen2.5-7b-instruct" / "sft.yaml")
    adapt_to_device(raw, "sft", cuda=True)
    assert raw["model_init_kwargs"]["dtype"] == "bfloat16" and raw["bf16"] and raw["optim"] == "adamw_torch_fused"
    assert raw["attn_implementation"] in ("flash_attention_3", "flash_attention_2", "torch_varlen", "flex_attention")  # packed rows
    assert raw["packing_strategy"] == "bfd" and raw["gradient_checkpointing"]
    # GRPO without vLLM on a GPU: a static KV cache, so transformers compiles the decode step
    raw = read_yaml(RECIPES / "qwen2.5-7b-instruct" / "grpo.yaml")
    notes = adapt_to_device(raw, "grpo", cuda=True)
    if not raw["use_vllm"]:
        assert raw["cache_implementation"] == "static" and any("generation_fallback: compiled" in n for n in notes)
        # Liger's layer kernels would make dynamo fall back to an eager decode (measured: 0.98x `generate`)
        assert raw["use_liger_kernel"] is False and any(n.startswith("use_liger_kernel: True -> False (its layer kernels stop the compiled decode") for n in notes)
        # no flash-attn: SDPA whose one-token decode steps run on the key/value heads (no repeat_kv of the static cache)
        assert raw["attn_implementation"] in ("flash_attention_3", "flash_attention_2", "sdpa_gqa_decode")
    # SFT keeps Liger wherever it is installed (its memory savings matter for 16k-token rows)
    raw = read_yaml(RECIPES / "qwen2.5-7b-instruct" / "sft.yaml")
    notes = adapt_to_device(raw, "sft", cuda=True)
    assert not any("compiled decode" in n for n in notes)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"learning_rate": "fast"}, "recipe error: argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
        ({"lerning_rate": 1}, "recipe error: --set lerning_rate: unknown key for sft"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_field(overrides, expected):
    with pytest.raises(RecipeError) as e:
        load_recipe("sft", RECIPES / "smollm2-135m" / "sft.yaml", overrides)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_unknown_recipe_key_and_reward(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model_name_or_path: x\nmax_step: 3\n")
    with pytest.raises(RecipeError, match=r"max_step: unknown key for sft"):
        load_recipe("sft", bad)
    with pytest.raises(RecipeError, match=r"reward_funcs: unknown reward 'length'"):
        get_rewards(["format", "length"])


def test_bad_data_is_one_line_naming_the_field(tmp_path):
    from finr1_core.training.data import DataError, load_rows, write_rows

    uri = write_rows([{"messages": [{"role": "user", "content": "q"}], "answer": None}], str(tmp_path / "p.parquet"))
    rows = load_rows(uri, "grpo")
    with pytest.raises(DataError, match=r"^data error: row 0: answer: missing"):
        grpo_examples(rows, None)
    with pytest.raises(DataError, match=r"^data error: row 0: conversation: missing"):
        sft_examples([{"text": "x"}])
    with pytest.raises(DataError, match=r"dataset: .* not found"):
        load_rows(str(tmp_path / "nope.parquet"), "sft")


def test_reasoning_steps_reward_is_graded():
    from finr1_core.training.rewards import REWARDS

    f = REWARDS["reasoning_steps"]
    assert f(["First, 0.12.\nThen, times 200.\nSo, 24", "Step 1: 0.12", "nothing"]) == [1.0, 1 / 3, 0.0]


def test_gqa_decode_attention_matches_sdpa():
    """The compiled decode's attention (one-token steps on the key/value heads) is transformers' SDPA
    attention with repeat_kv: same output for a padded batch; longer queries go to SDPA itself."""
    from types import SimpleNamespace

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from finr1_core.training.attention import gqa_decode_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=7, is_causal=True)
    k, v = torch.randn(2, 2, 20, 16), torch.randn(2, 2, 20, 16)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[0, ..., :5] = False  # left padding
    mask[:, ..., 17:] = False  # static cache slots not written yet
    q = torch.randn(2, 14, 1, 16)
    got, _ = gqa_decode_attention_forward(module, q, k, v, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert got.shape == want.shape == (2, 1, 14, 16)
    assert torch.allclose(got, want, atol=1e-5)
    q3 = torch.randn(2, 14, 3, 16)
    m3 = torch.ones(2, 1, 3, 20, dtype=torch.bool).tril(17)
    assert torch.equal(gqa_decode_attention_forward(module, q3, k, v, m3)[0], sdpa_attention_forward(module, q3, k, v, m3)[0])


def test_compiled_generation_drops_the_input_grad_hook_and_defers_the_stop_check():
    """While generating: no `make_inputs_require_grads` hook (dynamo breaks the decode graph on it) and
    transformers' deferred stop check on any device; afterwards one hook again, and no hook pile-up."""
    from types import SimpleNamespace

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.generation.utils import DeferredStopCheck

    from finr1_core.training.grpo import compiled_generation

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model.enable_input_require_grads()
    emb = model.get_input_embeddings()
    seen = []

    class FakeTrl:  # what TRL's generation does to the hooks with gradient checkpointing on
        def __init__(self, gc: bool):
            self.model_wrapped, self.accelerator, self.gc = model, SimpleNamespace(unwrap_model=lambda m: m), gc

        def _generate_single_turn(self, *a, **kw):
            seen.append((len(emb._forward_hooks), DeferredStopCheck.is_supported(torch.device("cuda"), None, False, False)))
            if self.gc:
                model.enable_input_require_grads()  # TRL's gradient_checkpointing_enable after generating
            return "ids"

    for gc in (True, False, True):
        assert compiled_generation(FakeTrl)(gc)._generate_single_turn() == "ids"
        assert len(emb._forward_hooks) == 1
    assert seen == [(0, True)] * 3
    assert not DeferredStopCheck.is_supported(torch.device("cuda"), None, False, False)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="the varlen kernel needs CUDA")
def test_varlen_attention_takes_the_collators_boundaries():
    """Packed rows: the boundaries TRL's padding-free collator computed on the host give the same
    attention as the ones derived from position_ids (no device-to-host sync)."""
    from types import SimpleNamespace

    import torch

    from finr1_core.training import attention

    if not attention.available():
        pytest.skip("torch.nn.attention.varlen is missing")
    torch.manual_seed(0)
    lens = [5, 17, 3, 40]
    t = sum(lens)
    pos = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(1, h, t, 64, device="cuda", dtype=torch.bfloat16) for h in (4, 2, 2))
    m = SimpleNamespace(num_key_value_groups=2)
    attention._last[:] = [None, None]
    want, _ = attention.varlen_attention_forward(m, q, k, v, None, position_ids=pos)
    got, _ = attention.varlen_attention_forward(m, q, k, v, None, position_ids=pos.clone(), cu_seq_lens_q=cu, max_length_q=40)
    assert torch.equal(got, want)
