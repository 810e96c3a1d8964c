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
``conversation`` to ``messages``. All files become visible at once (:mod:`finr1_core.publish`);
:func:`refresh_latest` publishes a run's release as ``<storage_root>/_release/latest.json``.
"""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .route import FLAG_REASONS, answer_status
from .storage import join

DATASET_NAME = "Financial-R1-Distill-Data"

# Licences as recorded in data/samples/SOURCES.md. "unknown" means no licence could be verified.
SOURCE_LICENSES = {
    "finqa": "MIT", "convfinqa": "MIT", "convfinqa_conv": "MIT", "tfns": "MIT (HF dataset card)",
    "fincuge": "none stated", "financeiq": "CC BY-NC-SA 4.0", "fineval": "Apache-2.0", "ant_finance": "CC BY 4.0",
    "ant_finance_finr1eval": "CC BY 4.0", "fincorpus": "unknown", "finpee": "unknown",
    "quant_trading_instruct": "unknown", "cfbenchmark": "Apache-2.0 (code); non-commercial research preview (data)",
    "finance_instruct_500k": "see the Hub card (Josephgflowers/Finance-Instruct-500k)",
}
SOURCE_ORIGINS = {
    "finqa": "FinQA (czyssrs/FinQA)", "convfinqa": "ConvFinQA (czyssrs/ConvFinQA)",
    "convfinqa_conv": "ConvFinQA (PoT copy)", "tfns": "zeroshot/twitter-financial-news-sentiment",
    "fincuge": "BBT-FinCUGE (ssymmetry)", "financeiq": "FinanceIQ (Duxiaoman-DI/XuanYuan)",
    "fineval": "FinEval (SUFE-AIFLM-Lab)", "ant_finance": "Fin-Eva (alipay/financial_evaluation_dataset)",
    "fincorpus": "FinCorpus (Duxiaoman-DI)", "finpee": "FinPEE", "quant_trading_instruct": "Quant-Trading-Instruct",
    "cfbenchmark": "CFBenchmark (TongjiFinLab)", "finance_instruct_500k": "Josephgflowers/Finance-Instruct-500k",
}
SPLITS = ("sft", "rl")
MODULES = ["金融代码", "金融专业知识", "金融非推理类业务知识", "金融推理类业务知识"]

_MSG = pa.struct([("role", pa.string()), ("content", pa.string())])
RELEASE_SCHEMA = pa.schema([
    ("repo_name", pa.string()),
    ("conversation", pa.list_(_MSG)),
    ("module", pa.string()),
    ("record_id", pa.string()),
    ("key", pa.string()),
    ("language", pa.string()),
    ("gold", pa.string()),
    ("answer_type", pa.string()),
    ("extracted", pa.string()),
    ("verdict", pa.string()),
    ("verify_reason", pa.string()),
    ("answer_judge", pa.int8()),
    ("answer_judge_version", pa.string()),
    ("reasoning_judge", pa.int8()),
    ("reasoning_judge_version", pa.string()),
    ("route", pa.string()),
    ("route_reason", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("teacher_model", pa.string()),
    ("prompt_template_version", pa.string()),
    ("lineage", pa.string()),
])
_LINEAGE_KEYS = ("source", "record_id", "key", "teacher_model", "model", "endpoint", "sampling", "temperature", "top_p",
                 "max_tokens", "sample_index", "prompt_hash", "prompt_template_version", "template_version", "started_at",
                 "ended_at", "prompt_tokens", "completion_tokens", "finish_reason", "attempts", "run_id", "shard")


def assistant_content(reasoning: str | None, answer: str | None) -> str:
    return f"<think>\n{(reasoning or '').strip()}\n</think>\n\n{(answer or '').strip()}"


def _split_trace(row: dict) -> tuple[str, str]:
    if row.get("reasoning") is not None or row.get("answer") is not None:
        return row.get("reasoning") or "", row.get("answer") or ""
    from .extract import split_think

    return split_think(row.get("text") or "")


def _s(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (dict, list)) else str(v)


def _i(v: Any) -> int | None:
    try:
        return None if v is None or v != v else int(v)
    except (TypeError, ValueError):
        return None


def release_row(row: dict) -> dict:
    reasoning, answer = _split_trace(row)
    lineage = {k: row[k] for k in _LINEAGE_KEYS if k in row and row[k] is not None}
    return {
        "repo_name": _s(row.get("repo_name")),
        "conversation": [{"role": "user", "content": str(row.get("question") or "")},
                         {"role": "assistant", "content": assistant_content(reasoning, answer)}],
        "module": _s(row.get("module")),
        "record_id": _s(row.get("record_id")),
        "key": _s(row.get("key")),
        "language": _s(row.get("language")),
        "gold": _s(row.get("gold")),
        "answer_type": _s(row.get("answer_type")),
        "extracted": _s(row.get("extracted")),
        "verdict": _s(row.get("verdict")),
        "verify_reason": _s(row.get("verify_reason")),
        "answer_judge": _i(row.get("answer_judge")),
        "answer_judge_version": _s(row.get("answer_judge_version")),
        "reasoning_judge": _i(row.get("reasoning_judge")),
        "reasoning_judge_version": _s(row.get("reasoning_judge_version")),
        "route": _s(row.get("route")),
        "route_reason": _s(row.get("route_reason")),
        "finish_reason": _s(row.get("finish_reason")),
        "prompt_tokens": _i(row.get("prompt_tokens")),
        "completion_tokens": _i(row.get("completion_tokens")),
        "teacher_model": _s(row.get("teacher_model") or row.get("model")),
        "prompt_template_version": _s(row.get("prompt_template_version") or row.get("template_version")),
        "lineage": json.dumps(lineage, ensure_ascii=False, default=str, sort_keys=True),
    }


# ----------------------------------------------------------------------------------- statistics
def _rate(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def compute_stats(scored_rows: Sequence[dict], removals: Sequence[dict]) -> dict:
    """Counts per source and per filtering step (the card's tables and the plots come from this)."""
    removed_keys = {str(r.get("key")) for r in removals}
    per_src: dict[str, Counter] = defaultdict(Counter)
    reasons = Counter()
    total = Counter()
    for r in scored_rows:
        src = r.get("repo_name") or "unknown"
        c = per_src[src]
        for cc in (c, total):
            cc["traces"] += 1
        flag = r.get("route_reason") if r.get("route_reason") in FLAG_REASONS else None
        if flag:
            for cc in (c, total):
                cc["flagged"] += 1
        else:
            ok, how = answer_status(r)
            for cc in (c, total):
                cc["round1_in"] += 1
                if ok:
                    cc["round1_pass"] += 1
                    cc[f"round1_pass_{how}"] += 1
                    cc["round2_in"] += 1
                    if r.get("reasoning_judge") == 1:
                        cc["round2_pass"] += 1
                if r.get("verdict") == "unknown":
                    cc["rule_unknown"] += 1
        reasons[r.get("route_reason") or "none"] += 1
        gone = str(r.get("key")) in removed_keys
        for cc in (c, total):
            cc["removed" if gone else f"released_{r.get('route')}"] += 1
    def finish(c: Counter) -> dict:
        d = dict(c)
        d["round1_pass_rate"] = _rate(c["round1_pass"], c["round1_in"])
        d["round2_pass_rate"] = _rate(c["round2_pass"], c["round2_in"])
        d["sft_rate"] = _rate(c["released_sft"], c["traces"])
        return d
    steps = Counter(r.get("step") for r in removals)
    return {
        "total": finish(total),
        "per_source": {k: finish(v) for k, v in sorted(per_src.items())},
        "route_reasons": dict(reasons.most_common()),
        "removals": dict(steps),
        "modules": dict(Counter(r.get("module") or "unknown" for r in scored_rows if str(r.get("key")) not in removed_keys)),
    }


# ----------------------------------------------------------------------------------- plots
def _plots(stats: dict, rows: Sequence[dict]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()

    srcs = list(stats["per_source"])
    r1 = [stats["per_source"][s]["round1_pass_rate"] or 0 for s in srcs]
    r2 = [stats["per_source"][s]["round2_pass_rate"] or 0 for s in srcs]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(srcs) + 2), 4))
    xs = range(len(srcs))
    ax.bar([x - 0.2 for x in xs], r1, width=0.4, label="round 1: answer correct")
    ax.bar([x + 0.2 for x in xs], r2, width=0.4, label="round 2: reasoning 1")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(srcs, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax.set_title("Pass rate per source")
    ax.legend()
    save(fig, "pass_rate_by_source.png")

    t = stats["total"]
    labels = ["not flagged", "round 1 (answer)", "round 2 (reasoning)", "released sft"]
    vals = [_rate(t.get("round1_in", 0), t.get("traces", 0)) or 0, t["round1_pass_rate"] or 0, t["round2_pass_rate"] or 0,
            t["sft_rate"] or 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, vals, color=["#888", "#4c72b0", "#55a868", "#c44e52"])
    for i, v in enumerate(vals):
        ax.text(i, v + 0.02, f"{v:.0%}", ha="center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate (of the step's input)")
    ax.set_title("Pass rate per round")
    save(fig, "pass_rate_by_round.png")

    by_route: dict[str, list[int]] = defaultdict(list)
    approx = False
    for r in rows:
        n = _i(r.get("completion_tokens"))
        if not n:
            n = max(1, len(r.get("text") or "") // 3)
            approx = True
        by_route[r.get("route") or "none"].append(n)
    fig, ax = plt.subplots(figsize=(6, 4))
    for route_name in sorted(by_route):
        ax.hist(by_route[route_name], bins=30, alpha=0.6, label=f"{route_name} (n={len(by_route[route_name])})")
    ax.set_xlabel("trace length (completion tokens" + (", approx. where missing)" if approx else ")"))
    ax.set_ylabel("traces")
    ax.set_title("Trace token lengths by route")
    if by_route:
        ax.legend()
    save(fig, "token_length_by_route.png")
    return out


# ----------------------------------------------------------------------------------- card
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def distribution_table(split_rows: dict[str, list[dict]]) -> str:
    srcs = sorted({r["repo_name"] or "unknown" for rows in split_rows.values() for r in rows})
    cnt = {sp: Counter(r["repo_name"] or "unknown" for r in rows) for sp, rows in split_rows.items()}
    lines = ["| Dataset | Data Volume | sft | rl |", "|---|---:|---:|---:|"]
    for s in srcs:
        lines.append(f"| {s} | {cnt['sft'][s] + cnt['rl'][s]} | {cnt['sft'][s]} | {cnt['rl'][s]} |")
    tot_s, tot_r = len(split_rows["sft"]), len(split_rows["rl"])
    lines.append(f"| **Total** | **{tot_s + tot_r}** | **{tot_s}** | **{tot_r}** |")
    return "\n".join(lines)


def _features():
    from datasets import Features

    return Features.from_arrow_schema(RELEASE_SCHEMA)


def loadable_splits(counts: dict[str, int]) -> list[str]:
    """The splits the card's ``configs`` list: the non-empty ones. ``datasets`` (5.2) cannot read a
    split with no rows (``Instruction "sft" corresponds to no data``), and one unreadable split makes
    the whole ``load_dataset(<dir>)`` fail, so an empty split is described in the card but not
    listed; its features are the config's features, shared by both splits."""
    return [sp for sp in SPLITS if counts.get(sp)] or list(SPLITS)


def card_data(name: str, counts: dict[str, int], num_bytes: dict[str, int], languages: list[str], size: str):
    """The card's metadata as a ``huggingface_hub.DatasetCardData``: licence, languages, the
    ``default`` config with the data files of every loadable split, and ``dataset_info`` with the
    features (``RELEASE_SCHEMA``, the same for ``sft`` and ``rl``) and those splits' sizes, so
    ``datasets.load_dataset(<release dir>)`` loads even when one split is empty."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    listed = loadable_splits(counts)
    cd = DatasetCardData(
        pretty_name=name, license="other", language=languages or ["zh", "en"],
        task_categories=["text-generation", "question-answering"], size_categories=[size],
        license_name="mixed-source-licences", license_link="LICENSE-NOTES.md",
        tags=["finance", "reasoning", "distillation", "fin-r1"],
        configs=[{"config_name": "default", "data_files": [{"split": sp, "path": f"data/{sp}-*.parquet"} for sp in listed]}],
    )
    splits = SplitDict()
    for sp in listed:
        splits.add(SplitInfo(name=sp, num_bytes=int(num_bytes.get(sp, 0)), num_examples=int(counts.get(sp, 0))))
    DatasetInfosDict({"default": DatasetInfo(features=_features(), splits=splits)}).to_dataset_card_data(cd)
    return cd


def _empty_note(counts: dict[str, int]) -> str:
    empty = [sp for sp in SPLITS if not counts.get(sp)]
    if not empty or len(empty) == len(SPLITS):
        return ""
    return (f"\nSplit(s) {', '.join(f'`{sp}`' for sp in empty)} have no rows in this release, so the `configs` list only "
            f"{', '.join(f'`{sp}`' for sp in SPLITS if sp not in empty)} (`datasets` cannot load an empty split); "
            "every split has the features in `dataset_info`.\n")


def size_category(n: int) -> str:
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K" if n < 100000 else "100K<n<1M"


def _yaml_header(name: str, counts: dict[str, int], languages: list[str], num_bytes: dict[str, int] | None = None) -> str:
    cd = card_data(name, counts, num_bytes or {}, languages, size_category(sum(counts.values())))
    return f"---\n{cd.to_yaml()}\n---\n"


def _source_table(stats: dict) -> list[str]:
    rows = ["| source | origin | licence | traces | round 1 pass | round 2 pass | sft | rl | removed |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s, c in stats["per_source"].items():
        rows.append(f"| {s} | {SOURCE_ORIGINS.get(s, '–')} | {SOURCE_LICENSES.get(s, 'unknown')} | {c.get('traces', 0)} | "
                    f"{_pct(c['round1_pass_rate'])} | {_pct(c['round2_pass_rate'])} | {c.get('released_sft', 0)} | "
                    f"{c.get('released_rl', 0)} | {c.get('removed', 0)} |")
    return rows


def _steps_table(t: dict) -> list[str]:
    return [
        "| step | input | passed | pass rate |", "|---|---:|---:|---:|",
        f"| 0. trace not empty / truncated / unclosed think | {t.get('traces', 0)} | {t.get('round1_in', 0)} | "
        f"{_pct(_rate(t.get('round1_in', 0), t.get('traces', 0)))} |",
        f"| 1. answer correct (rule verifier; answer judge when the rules say unknown) | {t.get('round1_in', 0)} | "
        f"{t.get('round1_pass', 0)} (rule {t.get('round1_pass_rule', 0)}, judge {t.get('round1_pass_judge', 0)}) | "
        f"{_pct(t['round1_pass_rate'])} |",
        f"| 2. reasoning judge (7 criteria) | {t.get('round2_in', 0)} | {t.get('round2_pass', 0)} | {_pct(t['round2_pass_rate'])} |",
        f"| 3. dedup (exact, MinHash near-dup) and decontamination | {t.get('traces', 0)} | "
        f"{t.get('traces', 0) - t.get('removed', 0)} | {_pct(_rate(t.get('traces', 0) - t.get('removed', 0), t.get('traces', 0)))} |",
    ]


def _small_tables(stats: dict, removals: Sequence[dict]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(route reasons, removals per step, removal examples, rows per module)."""
    reasons = ["| route_reason | rows |", "|---|---:|"] + [f"| `{k}` | {v} |" for k, v in stats["route_reasons"].items()]
    rem = ["| step | rows removed |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in sorted(stats["removals"].items())]
    if not stats["removals"]:
        rem.append("| (none) | 0 |")
    examples = [f"- `{r.get('key')}` ({r.get('repo_name')}): **{r.get('step')}**: {r.get('reason')}" for r in list(removals)[:20]]
    mods = ["| module | rows |", "|---|---:|"] + [f"| {m} | {stats['modules'].get(m, 0)} |" for m in MODULES]
    mods += [f"| {m} | {c} |" for m, c in stats["modules"].items() if m not in MODULES]
    return reasons, rem, examples, mods


def build_card(name: str, stats: dict, split_rows: dict[str, list[dict]], removals: Sequence[dict], *,
               judge_versions: dict[str, list[str]], prompt_versions: list[str], teacher_models: list[str],
               extra: str | None = None, num_bytes: dict[str, int] | None = None) -> str:
    counts = {sp: len(v) for sp, v in split_rows.items()}
    languages = sorted({r["language"] for rows in split_rows.values() for r in rows if r.get("language")}) or ["zh", "en"]
    head = _yaml_header(name, counts, languages, num_bytes)
    src_rows, steps = _source_table(stats), _steps_table(stats["total"])
    reasons, rem, examples, mods = _small_tables(stats, removals)
    jv = ", ".join(f"{k}: {', '.join(v) or '–'}" for k, v in judge_versions.items())
    return f"""{head}
# {name}

Reasoning traces distilled from a teacher model for financial questions, filtered the way Fin-R1 did
(answer check, then reasoning check) and split into **`sft`** (both checks passed) and **`rl`**
(everything else, with a `route_reason`). Generated on {datetime.now(timezone.utc).date().isoformat()}.

```python
from datasets import load_dataset
ds = load_dataset("<this directory or hub repo>")  # both splits, even an empty one
sft = ds["sft"].rename_column("conversation", "messages")  # TRL SFTTrainer format
```

## Distribution

{distribution_table(split_rows)}
{_empty_note(counts)}
{chr(10).join(mods)}

## Sources and licences

The release mixes sources with different licences (some non-commercial, some unverified); each row's
`repo_name` names its source. Check the licence of every source you use.

{chr(10).join(src_rows)}

## Filtering steps

{chr(10).join(steps)}

Round 1 uses the rule verifier (option letters, true/false, labels, numbers with units, percent and
a relative tolerance) and sends only the rows it cannot decide to the answer judge. A judge that fails after
retries gives *unknown*, never 0; such rows go to `rl`.

{chr(10).join(reasons)}

## Templates and models

- Teacher model(s): {', '.join(teacher_models) or '–'}
- Prompt template version(s): {', '.join(prompt_versions) or '–'}
- Judge template versions: {jv}

## Removal report

{chr(10).join(rem)}

{chr(10).join(examples) if examples else ''}
The full list is in `removals.jsonl`.

## Columns

`repo_name`, `conversation` (user question; assistant `<think>\\n…\\n</think>\\n\\n<answer>`), `module`,
`record_id`, `key`, `language`, `gold`, `answer_type`, `extracted`, `verdict`, `verify_reason`, `answer_judge`,
`answer_judge_version`, `reasoning_judge`, `reasoning_judge_version`, `route`, `route_reason`, `finish_reason`,
`prompt_tokens`, `completion_tokens`, `teacher_model`, `prompt_template_version`, `lineage` (JSON).

## Plots

![pass rate per source](plots/pass_rate_by_source.png)
![pass rate per round](plots/pass_rate_by_round.png)
![trace token lengths by route](plots/token_length_by_route.png)
{extra or ''}"""


# ----------------------------------------------------------------------------------- entry point
LATEST_DIR = "_release"
LATEST_POINTER = "latest.json"


class ReleaseError(ValueError):
    """A release that cannot be published or found; always one line."""


def _parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), buf, compression="zstd")
    else:  # no row group at all: `datasets` rejects a Parquet file with one empty row group
        pq.ParquetWriter(buf, RELEASE_SCHEMA, compression="zstd").close()
    return buf.getvalue()


def release_dataset(scored_rows: Sequence[dict], out_uri: str, *, removals: Iterable[dict] = (),
                    name: str = DATASET_NAME, storage_options: dict | None = None, card_extra: str | None = None) -> dict:
    """Write the release under ``out_uri`` (local path or ``s3://``), all files at once
    (:func:`finr1_core.publish.publish_tree`). Returns a summary dict with the split counts, file
    URIs and the stats behind the card."""
    from .publish import publish_tree

    removals = list(removals)
    removed_keys = {str(r.get("key")) for r in removals}
    splits: dict[str, list[dict]] = {sp: [] for sp in SPLITS}
    for r in scored_rows:
        if str(r.get("key")) in removed_keys:
            continue
        rr = release_row(r)
        splits["sft" if rr["route"] == "sft" else "rl"].append(rr)
    stats = compute_stats(scored_rows, removals)
    blobs: dict[str, bytes] = {f"data/{sp}-00000-of-00001.parquet": _parquet(rows) for sp, rows in splits.items()}
    blobs.update({f"plots/{pname}": png for pname, png in _plots(stats, scored_rows).items()})

    def versions(col: str) -> list[str]:
        return sorted({str(r.get(col)) for r in scored_rows if r.get(col)})

    card = build_card(name, stats, splits, removals,
                      judge_versions={"answer": versions("answer_judge_version"), "reasoning": versions("reasoning_judge_version")},
                      prompt_versions=sorted(set(versions("prompt_template_version")) | set(versions("template_version"))),
                      teacher_models=sorted(set(versions("teacher_model")) | set(versions("model"))), extra=card_extra,
                      num_bytes={sp: len(blobs[f"data/{sp}-00000-of-00001.parquet"]) for sp in SPLITS})
    blobs["README.md"] = card.encode()
    blobs["distribution.md"] = (distribution_table(splits) + "\n").encode()
    blobs["LICENSE-NOTES.md"] = ("# Licences of the sources\n\n" + "\n".join(
        f"- **{s}**: {SOURCE_LICENSES.get(s, 'unknown')}" for s in stats["per_source"]) + "\n").encode()
    blobs["removals.jsonl"] = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in removals).encode()
    blobs["stats.json"] = json.dumps(stats, ensure_ascii=False, indent=2, default=str).encode()
    publish_tree(blobs, out_uri, storage_options)
    files = {sp: join(out_uri, "data", f"{sp}-00000-of-00001.parquet") for sp in SPLITS}
    files.update({k.split("/", 1)[1]: join(out_uri, k) for k in blobs if k.startswith("plots/")})
    files.update(card=join(out_uri, "README.md"), distribution=join(out_uri, "distribution.md"),
                 removals=join(out_uri, "removals.jsonl"), stats=join(out_uri, "stats.json"))
    return {"name": name, "uri": out_uri, "counts": {k: len(v) for k, v in splits.items()}, "files": files, "stats": stats}


def refresh_latest(storage_root: str, run_id: str, *, release_uri: str | None = None, storage_options: dict | None = None,
                   info: dict | None = None, keep: int = 3) -> dict:
    """Publish run ``run_id``'s release as the latest one, atomically: its files are copied to
    ``<storage_root>/_release/versions/<UTC stamp>-<run_id>/`` and only then is
    ``<storage_root>/_release/latest.json`` rewritten to point there. A reader that resolves the
    pointer (:func:`resolve_latest`) always gets a complete release; a refresh killed mid-copy
    leaves the previous one in place. Returns the pointer (``run_id``, ``version``, ``uri``,
    ``release``, ``files``, ``published_at`` and ``info``)."""
    from .publish import committed, publish_version, read_tree

    src = release_uri or join(storage_root, run_id, "release")
    try:
        complete = committed(src, storage_options)
        files = read_tree(src, storage_options) if complete else {}
    except OSError as e:
        raise ReleaseError(f"release {src}: cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not complete or "README.md" not in files:
        raise ReleaseError(f"run {run_id} has no complete release at {src}")
    version = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{run_id}"
    return publish_version(files, join(storage_root, LATEST_DIR), version, LATEST_POINTER,
                           info={"run_id": run_id, "release": src, **(info or {})}, storage_options=storage_options, keep=keep)


def resolve_latest(storage_root: str, storage_options: dict | None = None) -> dict | None:
    """The latest-release pointer (its ``uri`` is a complete release directory), or None."""
    from .publish import read_pointer

    return read_pointer(join(storage_root, LATEST_DIR), LATEST_POINTER, storage_options)


def push_release(release_uri: str, repo_id: str, *, token: str | None = None, private: bool = False,
                 storage_options: dict | None = None, timeout_s: float = 20.0, log=print) -> str:
    """Publish a complete release directory (local or ``s3://``) as the Hugging Face dataset
    ``repo_id`` through ``huggingface_hub`` (the card's metadata is checked as ``DatasetCardData``
    first). The token comes from ``token`` or ``HF_TOKEN``; each HTTP call gives up after
    ``timeout_s``. Every failure is a :class:`ReleaseError` with one line. Returns the dataset URL."""
    import os
    import tempfile
    from pathlib import Path

    from huggingface_hub import DatasetCard, HfApi, constants, get_session

    from .publish import committed, read_tree

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise ReleaseError("release push: HF_TOKEN is not set (a Hugging Face write token is needed)")
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ReleaseError(f"release push: --repo must be ORG/NAME (got {repo_id!r})")
    if constants.is_offline_mode():
        raise ReleaseError("release push: HF_HUB_OFFLINE is set; unset it to publish")
    if not committed(release_uri, storage_options):
        raise ReleaseError(f"release push: no complete release at {release_uri}")
    files = read_tree(release_uri, storage_options)
    card = DatasetCard(files["README.md"].decode())
    if not card.data.get("configs") or not card.data.get("dataset_info"):
        raise ReleaseError(f"release push: {release_uri}/README.md has no configs/dataset_info metadata")
    get_session().timeout = timeout_s
    api = HfApi(token=token, endpoint=constants.ENDPOINT)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="finr1-push-") as d:
            for rel, data in files.items():
                (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(d) / rel).write_bytes(data)
            api.upload_folder(folder_path=d, repo_id=repo_id, repo_type="dataset",
                              commit_message=f"finr1 release ({card.data.get('pretty_name') or DATASET_NAME})")
    except Exception as e:  # noqa: BLE001 - network, auth and hub errors all become one line
        msg = " ".join(str(e).split())[:240] or type(e).__name__
        raise ReleaseError(f"release push to {constants.ENDPOINT}/datasets/{repo_id} failed: {type(e).__name__}: {msg}") from None
    log(f"pushed {len(files)} files to {url}")
    return str(url)
