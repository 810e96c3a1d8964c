"""The pipeline's stages, declared once (see :mod:`finr1_core.stages.base`), and the one runner.

Stage outputs under ``<storage_root>/<run_id>/``::

    records/     normalized records, one shard per source        (ingest)
    quarantine/  rows that could not be normalized, with reason  (ingest)
    heldout/     records held out for evaluation                 (ingest)
    prompts/     prompts, one shard per distill shard            (prompts)
    distill/     teacher traces with lineage                     (distill, one call per shard)
    scored/      traces + rule verdicts + judge scores + route    (score, one call per shard)
    sft/ rl/     the routed, deduplicated, decontaminated splits (split)
    release/     Financial-R1-Distill-Data: parquet + README card + plots (split)
    models/      sft/ and grpo/ checkpoints                      (sft, grpo)
    eval/        per-model evaluation rows                       (eval, one call per model)
    report/      report.md, summary.json                         (report)
"""
from finr1_core.stages.evaluate import MODELS
from finr1_core.stages.registry import STAGE_NAMES, STAGES, downstream, stage
from finr1_core.stages.runner import expected_shards, finish_stage, pending_shards, run_stage, stage_hash
from finr1_core.stages.runs import load, load_run_config, new_run_id, save_run_config, store_for
from finr1_core.stages.train import model_path

__all__ = [
    "MODELS", "STAGES", "STAGE_NAMES", "downstream", "expected_shards", "finish_stage", "load", "load_run_config", "model_path", "new_run_id",
    "pending_shards", "run_stage", "save_run_config", "stage", "stage_hash", "store_for",
]
