"""GPU smoke of the training job: a tiny random Qwen2-shaped model, a few SFT then GRPO steps
through ``finr1_core.training.launch.train`` (accelerate launch, bf16, the recipe's attention
backend), checked for loss, checkpoints, plot and reward statistics. No hub, no downloads.

    python infra/train/gpu_smoke.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from finr1_core.training.data import write_rows
    from finr1_core.training.launch import train
    from train_throughput import tokenizer_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.out or tempfile.mkdtemp())
    mdir = tokenizer_dir(work / "tiny")
    tok = AutoTokenizer.from_pretrained(mdir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(mdir)
    conv = lambda i: [{"role": "user", "content": f"w{i} w{i+1} w{i+2}"}, {"role": "assistant", "content": f"<think> w{i} </think> \\boxed{{ {i % 10} }}"}]
    write_rows([{"conversation": conv(i)} for i in range(32)], str(work / "sft.parquet"))
    write_rows([{"messages": conv(i)[:1], "answer": str(i % 10), "answer_type": "numeric"} for i in range(16)], str(work / "rl.parquet"))
    lines = []
    sft = train("sft", str(ROOT / "configs/recipes/smollm2-135m/sft.yaml"), str(work / "sft.parquet"), str(work / "sft-out"),
                overrides={"model_name_or_path": str(mdir), "max_steps": 4, "save_steps": 2}, on_line=lines.append)
    grpo = train("grpo", str(ROOT / "configs/recipes/smollm2-135m/grpo.yaml"), str(work / "rl.parquet"), str(work / "grpo-out"),
                 overrides={"model_name_or_path": str(sft["output_dir"]), "max_steps": 2, "max_completion_length": 32},
                 on_line=lines.append)
    # GRPO generation without vLLM the fast way: static cache, decode compiled by transformers
    compiled = train("grpo", str(ROOT / "configs/recipes/smollm2-135m/grpo.yaml"), str(work / "rl.parquet"), str(work / "grpo-compiled"),
                     overrides={"model_name_or_path": str(sft["output_dir"]), "max_steps": 2, "max_completion_length": 32,
                                "generation_fallback": "compiled"}, on_line=lines.append)
    keys = ("steps", "train_loss", "reward", "adapted", "checkpoint", "plot")
    summary = {"cuda": torch.cuda.is_available(), "sft": {k: sft[k] for k in keys if k in sft},
               "grpo": {k: grpo[k] for k in keys}, "grpo_compiled": {k: compiled[k] for k in keys}}
    print(json.dumps(summary, indent=2, default=str))
    assert sft["steps"] == 4 and sft["train_loss"] > 0 and grpo["steps"] == 2 and compiled["steps"] == 2, summary
    if torch.cuda.is_available():
        assert any("torch_varlen" in a for a in sft["adapted"]), sft["adapted"]
        assert any("cache_implementation" in a for a in compiled["adapted"]), compiled["adapted"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
