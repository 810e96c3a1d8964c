"""The dataset card of a release (``README.md`` with the Hub's YAML header), its plots, the
source -> rows table (``distribution.md``) and the licence notes.
"""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Sequence

from ..records import MODULES
from .rows import RELEASE_SCHEMA, SPLITS, ratio, to_int

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


# ----------------------------------------------------------------------------------- plots
def plots(stats: dict, rows: Sequence[dict]) -> dict[str, bytes]:
    """The card's PNGs (file name -> bytes): pass rate per source and per round, trace lengths by route."""
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
    vals = [ratio(t.get("round1_in", 0), t.get("traces", 0)) or 0, t["round1_pass_rate"] or 0, t["round2_pass_rate"] or 0,
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
        n = to_int(r.get("completion_tokens"))
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
        f"{_pct(ratio(t.get('round1_in', 0), t.get('traces', 0)))} |",
        f"| 1. answer correct (rule verifier; answer judge when the rules say unknown) | {t.get('round1_in', 0)} | "
        f"{t.get('round1_pass', 0)} (rule {t.get('round1_pass_rule', 0)}, judge {t.get('round1_pass_judge', 0)}) | "
        f"{_pct(t['round1_pass_rate'])} |",
        f"| 2. reasoning judge (7 criteria) | {t.get('round2_in', 0)} | {t.get('round2_pass', 0)} | {_pct(t['round2_pass_rate'])} |",
        f"| 3. dedup (exact, MinHash near-dup) and decontamination | {t.get('traces', 0)} | "
        f"{t.get('traces', 0) - t.get('removed', 0)} | {_pct(ratio(t.get('traces', 0) - t.get('removed', 0), t.get('traces', 0)))} |",
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


def licence_notes(sources: Sequence[str]) -> str:
    """``LICENSE-NOTES.md``: the licence of every source in the release."""
    return "# Licences of the sources\n\n" + "\n".join(f"- **{s}**: {SOURCE_LICENSES.get(s, 'unknown')}" for s in sources) + "\n"
