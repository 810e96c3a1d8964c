"""Release of Financial-R1-Distill-Data: Parquet ``sft``/``rl`` splits, dataset card, plots.

``release_dataset(scored_rows, out_uri, removals=...)`` writes, under any fsspec URI::

    <out>/data/sft-00000-of-00001.parquet
    <out>/data/rl-00000-of-00001.parquet
    <out>/README.md                 dataset card with the Hub's YAML header (configs, splits, licence)
    <out>/distribution.md           source -> rows table, like the Fin-R1 README's
    <out>/removals.jsonl            every row removed by dedup/decontamination, with its reason
    <out>/stats.json                counts and pass rates (machine-readable)
    <out>/plots/pass_rate_by_source.png, pass_rate_by_round.png, token_length_by_route.png

``scored_rows`` are **all** scored rows (output of ``route.score_traces``), so the card's pass
rates cover the whole filter; rows whose ``key`` is in ``removals`` are left out of the splits.

Columns: ``repo_name``, ``conversation`` (list of ``{role, content}``; the assistant content is
``<think>\\n…\\n</think>\\n\\n<answer>``), ``module`` (the four-module label), the scores
(``verdict``, ``answer_judge``, ``reasoning_judge``, judge versions, ``route``, ``route_reason``) and
lineage (``record_id``, ``key``, ``teacher_model``, ``prompt_template_version``, ``lineage`` JSON).
Load it with ``datasets.load_dataset(<release dir>)`` (both splits, an empty one too: the card's
``configs``/``dataset_info`` name both with their features); for TRL's SFTTrainer rename
``conversation`` to ``messages``.

- :mod:`.rows`: the splits, the Parquet schema, :func:`release_row`, :func:`compute_stats`;
- :mod:`.card`: the dataset card, its plots, the distribution table and the licence notes;
- :mod:`.export`: :func:`release_dataset` (all files visible at once, :mod:`finr1_core.publish`),
  the latest pointer (:func:`refresh_latest`, :func:`resolve_latest`) and :func:`push_release`.
"""
from .card import SOURCE_LICENSES, SOURCE_ORIGINS, build_card, card_data, distribution_table, loadable_splits
from .export import LATEST_DIR, LATEST_POINTER, ReleaseError, push_release, refresh_latest, release_dataset, resolve_latest
from .rows import DATASET_NAME, RELEASE_SCHEMA, SPLITS, compute_stats, release_row

__all__ = [
    "DATASET_NAME",
    "LATEST_DIR",
    "LATEST_POINTER",
    "RELEASE_SCHEMA",
    "SOURCE_LICENSES",
    "SOURCE_ORIGINS",
    "SPLITS",
    "ReleaseError",
    "build_card",
    "card_data",
    "compute_stats",
    "distribution_table",
    "loadable_splits",
    "push_release",
    "refresh_latest",
    "release_dataset",
    "release_row",
    "resolve_latest",
]
