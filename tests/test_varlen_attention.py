"""The packed-row attention backend (PyTorch's FlashAttention varlen kernel) against SDPA run on each
sequence alone. The kernel needs CUDA: the numeric tests run on the GPU machine
(``pytest tests/test_varlen_attention.py``); the CPU test checks the recipe adaptation."""
from __future__ import annotations

import pytest
import torch

from finr1_core.training import attention
from finr1_core.training.device import adapt_to_device, pick_attention

cuda = pytest.mark.skipif(not attention.available(), reason="needs CUDA and torch.nn.attention.varlen")


def test_cpu_recipes_never_pick_or_keep_the_varlen_kernel():
    assert pick_attention(False, packed=True) == "sdpa"
    raw = {"attn_implementation": attention.NAME, "packing": True}
    notes = adapt_to_device(raw, "sft", cuda=False)
    assert raw["attn_implementation"] == "sdpa" and raw["model_init_kwargs"]["attn_implementation"] == "sdpa"
    assert any("varlen kernel needs CUDA" in n for n in notes)


def _models():
    from transformers import AutoModelForCausalLM, Qwen2Config

    attention.register()
    cfg = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    var = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation=attention.NAME).cuda()
    var.load_state_dict(ref.state_dict())
    return ref, var


@cuda
def test_packed_row_matches_each_sequence_alone_forward_and_backward():
    ref, var = _models()
    lengths = [37, 100, 64]
    seqs = [torch.randint(0, 512, (n,), device="cuda") for n in lengths]
    packed = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    out = var(input_ids=packed, position_ids=pos).logits[0].float()
    alone = torch.cat([ref(input_ids=s[None]).logits[0].float() for s in seqs])
    torch.testing.assert_close(out, alone, rtol=2e-2, atol=2e-2)
    # no leak across boundaries: the same rows without restarts differ after the first sequence
    leak = var(input_ids=packed).logits[0].float()
    assert (leak[lengths[0]:] - alone[lengths[0]:]).abs().max() > 0.05

    labels = packed.clone()
    labels[0, [lengths[0], lengths[0] + lengths[1]]] = -100  # no loss across a boundary
    var(input_ids=packed, position_ids=pos, labels=labels).loss.backward()
    loss_ref = sum(ref(input_ids=s[None], labels=s[None]).loss * (len(s) - 1) for s in seqs) / (sum(lengths) - len(lengths))
    loss_ref.backward()
    g_var = var.model.layers[0].self_attn.q_proj.weight.grad.float()
    g_ref = ref.model.layers[0].self_attn.q_proj.weight.grad.float()
    assert torch.nn.functional.cosine_similarity(g_var.flatten(), g_ref.flatten(), dim=0) > 0.99


@cuda
def test_padded_batch_and_generation_fall_back_to_sdpa():
    ref, var = _models()
    ids = torch.randint(0, 512, (2, 20), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    torch.testing.assert_close(var(input_ids=ids, attention_mask=mask).logits[1, 5:].float(),
                               ref(input_ids=ids, attention_mask=mask).logits[1, 5:].float(), rtol=2e-2, atol=2e-2)
    a = var.generate(ids[:1], max_new_tokens=8, do_sample=False)
    b = ref.generate(ids[:1], max_new_tokens=8, do_sample=False)
    assert a.shape == b.shape == (1, 28)
