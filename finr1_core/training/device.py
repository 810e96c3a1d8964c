"""One recipe, any device: GPU-fast settings on CUDA, the same code in fp32 on a CPU.

Applied to the recipe mapping before TRL parses it, so an explicit ``--set`` still wins.
"""
from __future__ import annotations

import importlib.util

from finr1_core.training import attention


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pick_attention(cuda: bool, packed: bool) -> str:
    """Fastest installed attention backend that keeps packed sequences apart.

    flash-attn (varlen kernels) first; else, for packed / padding-free rows, PyTorch's own
    FlashAttention varlen kernel (:mod:`finr1_core.training.attention`), then flex attention (the
    SDPA fast kernel does not take the block-diagonal mask); else SDPA.
    """
    if not cuda:
        return "sdpa"
    if has("flash_attn_interface"):
        return "flash_attention_3"
    if has("flash_attn"):
        return "flash_attention_2"
    if packed:
        return attention.NAME if attention.available() else "flex_attention"
    return "sdpa"


def adapt_to_device(raw: dict, method: str, cuda: bool | None = None) -> list[str]:
    """Mutate a recipe mapping for this machine; returns one note per change (for the log)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    notes: list[str] = []

    def setv(k, v, why):
        if raw.get(k) != v:
            notes.append(f"{k}: {raw.get(k)!r} -> {v!r} ({why})")
            raw[k] = v

    packed = bool(raw.get("padding_free") or (raw.get("packing") and raw.get("packing_strategy", "bfd") != "wrapped"))
    auto_attention = raw.get("attn_implementation") in (None, "auto")
    if auto_attention:
        setv("attn_implementation", pick_attention(cuda, packed), "fastest installed backend")
    if not cuda:
        setv("dtype", "float32", "CPU runs fp32")
        for k in ("bf16", "fp16"):  # TRL turns bf16 on by default: CPU autocast is not fp32
            setv(k, False, "no GPU")
        for k in ("use_liger_kernel", "use_vllm", "gradient_checkpointing"):
            if raw.get(k):
                setv(k, False, "no GPU")
        if "fused" in str(raw.get("optim", "")):
            setv("optim", "adamw_torch", "no GPU")
        if raw.get("attn_implementation") == attention.NAME:
            setv("attn_implementation", "sdpa", "the varlen kernel needs CUDA")
        setv("use_cpu", True, "no GPU")
    else:
        raw.setdefault("dtype", "bfloat16")
        if method == "grpo" and raw.get("use_vllm") and not has("vllm"):
            setv("use_vllm", False, "vLLM not installed")
        if method == "grpo" and not raw.get("use_vllm"):
            fallback = raw.get("generation_fallback")
            if fallback == "paged":
                setv("use_transformers_continuous_batching", True, "generation_fallback: paged")
            elif fallback == "compiled":
                setv("cache_implementation", "static", "generation_fallback: compiled (decode compiled by transformers)")
                if auto_attention and raw["attn_implementation"] == "sdpa":
                    setv("attn_implementation", attention.GQA_DECODE, "generation_fallback: compiled (SDPA, with one-token decode steps "
                         "on the key/value heads: no repeat_kv copy of the static cache in every layer and step)")
                if raw.get("use_liger_kernel"):
                    # Liger patches the model's layers with Triton kernels that dynamo cannot trace: each
                    # layer graph-breaks, recompiles on its layer index until the recompile limit, and the
                    # decode runs eager (no faster than `generate`). GRPO's loss memory does not need Liger:
                    # TRL computes the log-probs in chunks through its own fused LM head.
                    setv("use_liger_kernel", False, "its layer kernels stop the compiled decode; TRL's chunked LM head keeps the loss memory low")
        if raw.get("use_liger_kernel") and not has("liger_kernel"):
            setv("use_liger_kernel", False, "liger-kernel not installed")
    if raw["attn_implementation"] == attention.NAME:
        attention.register()
    elif raw["attn_implementation"] == attention.GQA_DECODE:
        attention.register_gqa_decode()
    mik = dict(raw.get("model_init_kwargs") or {})
    mik.setdefault("dtype", raw.get("dtype") or "auto")
    mik.setdefault("attn_implementation", raw["attn_implementation"])
    if raw.get("trust_remote_code"):
        mik.setdefault("trust_remote_code", True)
    raw["model_init_kwargs"] = mik
    return notes
