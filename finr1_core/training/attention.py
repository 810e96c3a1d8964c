"""Packed-row attention on PyTorch's own FlashAttention varlen kernel (``torch.nn.attention.varlen``).

Packed SFT rows (``packing_strategy: bfd`` or ``padding_free``) reach the model as one long row whose
``position_ids`` restart at 0 for every sequence. SDPA's fast kernel cannot keep those sequences
apart (it refuses the block-diagonal mask), and flash-attn is often not installed; PyTorch (2.10 and
newer) ships the FlashAttention-2 varlen kernel itself. :data:`NAME` registers it with transformers'
``AttentionInterface`` as an ``attn_implementation``:

- no padding mask and no KV cache (training): the sequence boundaries come from the collator's
  ``cu_seq_lens_q``/``max_length_q`` (TRL's padding-free collator computes them on the host), else from
  ``position_ids`` (one device-to-host sync per forward), else each row is one sequence; the kernel
  runs on the flattened tokens;
- anything else (a padding mask, generation with a cache, dropout): SDPA with an explicit mask.

Measured against flex attention, the previous pick for packed rows, in
``benchmarks/train_throughput.py``.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect

NAME = "torch_varlen"


def available() -> bool:
    """PyTorch ships ``torch.nn.attention.varlen`` (2.10+) and a CUDA device is present."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("torch.nn.attention.varlen") is not None


def register() -> str:
    """Make ``attn_implementation: torch_varlen`` loadable in this process (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)  # None unless rows are padded
    return NAME


_last: list = [None, None]  # (position_ids, boundaries): every layer of one forward shares them


def _boundaries(position_ids, batch: int, seq: int, device):
    """(cu_seqlens int32, max_len): from position_ids restarts, else one sequence per row."""
    import torch

    if position_ids is not None and _last[0] is position_ids:
        return _last[1]
    if position_ids is not None and batch == 1:
        pos = position_ids.reshape(-1)
        starts = (pos == pos.min()).nonzero().reshape(-1).to(torch.int32)
        cu = torch.cat([starts, torch.tensor([seq], dtype=torch.int32, device=device)])
        out = (cu, int(cu.diff().max()))
    else:
        out = (torch.arange(batch + 1, dtype=torch.int32, device=device) * seq, seq)
    if position_ids is not None:
        _last[0], _last[1] = position_ids, out
    return out


@functools.cache
def _kernel_params() -> frozenset[str]:
    """The installed ``varlen_attn``'s keyword names (causal masking and GQA are spelled differently across 2.10-2.12)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _kernel_kwargs(scaling: float | None, gqa: bool) -> dict:
    params = _kernel_params()
    kw = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if scaling is not None and "scale" in params:
        kw["scale"] = scaling
    if gqa and "enable_gqa" in params:
        kw["enable_gqa"] = True
    return kw


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, **kwargs):
    """transformers' attention signature: query/key/value are (batch, heads, seq, dim); returns (batch, seq, heads, dim)."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    b, hq, t, d = query.shape
    if attention_mask is not None or key.shape[2] != t or dropout > 0 or sliding_window is not None:
        return _sdpa_fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    hk = key.shape[1]
    kw = _kernel_kwargs(scaling, hk != hq)
    if hk != hq and "enable_gqa" not in kw:
        key = key.repeat_interleave(hq // hk, dim=1)
        value = value.repeat_interleave(hq // hk, dim=1)
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if b != 1 or cu is None or max_len is None or int(cu.numel()) < 2:
        cu, max_len = _boundaries(kwargs.get("position_ids"), b, t, query.device)
    else:  # TRL's padding-free collator computed the boundaries on the host: no device-to-host sync here
        cu = cu.to(device=query.device, dtype=torch.int32)
        max_len = int(max_len)
    q, k, v = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value))
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw)
    return out.reshape(b, t, hq, d), None


def _sdpa_fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    """A padded batch or a KV cache: SDPA with the 2-D padding mask made causal and 4-D."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask
    if mask is not None and mask.dim() == 2:
        q_len, k_len = query.shape[2], key.shape[2]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        mask = causal[None, None] & mask.bool()[:, None, None, :]
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                  is_causal=mask is None and query.shape[2] > 1, **kwargs)


# --- GRPO's compiled decode: single-token steps on the key/value heads -------------------------------------------

GQA_DECODE = "sdpa_gqa_decode"


def register_gqa_decode() -> str:
    """Make ``attn_implementation: sdpa_gqa_decode`` loadable in this process (idempotent): transformers'
    SDPA attention, with its masks, except for one-token decode steps of grouped-query attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_DECODE, gqa_decode_attention_forward)
    AttentionMaskInterface.register(GQA_DECODE, sdpa_mask)
    return GQA_DECODE


def gqa_decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                                 **kwargs):
    """SDPA, except a one-token query of grouped-query attention: that runs on the key/value heads.

    transformers' SDPA path folds the query heads onto the key/value heads for a decode step only when
    it is not compiled; under ``torch.compile`` (the static-cache decode of ``generation_fallback:
    compiled``) it copies the whole static cache ``num_key_value_groups`` times in every layer and step
    (``repeat_kv``) and calls SDPA on ``num_attention_heads`` heads, with a padding mask, which sends it
    to a kernel built for long queries. Measured at 0.5B (14 query, 2 key/value heads, a 566-token
    cache), 32 completions, an H200: about 86 us per layer and step (cuDNN: 44 us of attention and two
    21 us copies; the memory-efficient kernel: 89 us), 2 ms of a 3 ms decode step.

    Here the ``(batch, heads, 1, dim)`` query becomes ``(batch, kv_heads, groups, dim)`` (query head
    ``h`` reads key/value head ``h // groups``, as ``repeat_kv`` lays them out) and attention is the
    arithmetic of transformers' eager attention: scores in the model's dtype, softmax in fp32, the
    ``(batch, 1, 1, kv_len)`` mask broadcast over the groups. Compiled, that is two small batched
    matmuls and one fused masked softmax per layer."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, hq, t, d = query.shape
    if (t != 1 or groups == 1 or dropout > 0 or kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
            or (attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or attention_mask.shape[2] != 1))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    q = query.reshape(b, key.shape[1], groups, d)
    scores = torch.matmul(q, key.transpose(-1, -2)) * (d ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool else scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value).reshape(b, 1, hq, value.shape[-1]), None
