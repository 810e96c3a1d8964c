"""Every stage of the pipeline, in DAG order."""
from __future__ import annotations

from finr1_core import config
from finr1_core.stages.base import Stage
from finr1_core.stages.data import INGEST, PROMPTS
from finr1_core.stages.distill import DISTILL, SCORE
from finr1_core.stages.evaluate import EVAL, REPORT
from finr1_core.stages.split import SPLIT
from finr1_core.stages.train import GRPO, SFT

STAGES: dict[str, Stage] = {s.name: s for s in (INGEST, PROMPTS, DISTILL, SCORE, SPLIT, SFT, GRPO, EVAL, REPORT)}
STAGE_NAMES: tuple[str, ...] = config.STAGES
if tuple(STAGES) != STAGE_NAMES:  # the config validates stage names against config.STAGES
    raise RuntimeError(f"stage registry {tuple(STAGES)} differs from config.STAGES {STAGE_NAMES}")


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}") from None


def downstream(name: str) -> list[str]:
    """The stages whose hash chains through ``name`` (itself included), in DAG order."""
    out = {name}
    for s in STAGES.values():
        if any(i in out for i in s.inputs):
            out.add(s.name)
    return [s for s in STAGE_NAMES if s in out]
