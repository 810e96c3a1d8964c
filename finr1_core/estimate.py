"""What a run would cost, without running it: ``dry_run(cfg) -> dict`` and ``to_markdown(est)``.

Ingests every source in memory (nothing is written), holds out evaluation rows as the ingest stage
does, renders the teacher prompt of every training record (:func:`finr1_core.prompts.build_prompt`)
and counts tokens per source and per call route:

- ``teacher``: one request per prompt and sample (``teacher.n``); input = the rendered prompt and
  forced prefix, output = ``teacher.max_tokens`` per sample (an upper bound: traces end earlier).
- ``answer_judge`` / ``reasoning_judge``: one request per trace at most (the answer judge only sees
  rows the rule verifier cannot decide, the reasoning judge only rows whose answer is correct, so
  these are upper bounds); input = the judge template + question + gold (+ the trace for the
  reasoning judge, at ``teacher.max_tokens``), output = ``judge.max_tokens``.

Tokens are counted with the role's tokenizer when it is a local directory (``tokenizer`` or a local
``model`` path, as in the embedded profile), else with a heuristic: ASCII characters / 4 plus other
characters / 1.5 (CJK text runs about 1-2 characters per token). Costs use
``price_per_m_input``/``price_per_m_output``; wall time uses ``tokens_per_s`` (aggregate generation
throughput of the role's endpoints) when set. No model is called and Prefect is not started.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from .config import LLMRole, PipelineConfig
from .stages.data import split_heldout

ROUTES = ("teacher", "answer_judge", "reasoning_judge")
TEMPLATE_OVERHEAD_TOKENS = 12  # chat-template wrapping of one user message (roles, markers)


def _heuristic(text: str) -> int:
    ascii_n = sum(1 for c in text if ord(c) < 128)
    return int(ascii_n / 4 + (len(text) - ascii_n) / 1.5) + 1


def token_counter(role: LLMRole) -> tuple[Callable[[str], int], str]:
    """(count(text) -> tokens, how it counts) for a role."""
    for cand in (role.tokenizer, role.model):
        if cand and Path(cand).is_dir() and (Path(cand) / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cand)
            return (lambda t, tok=tok: len(tok.encode(t, add_special_tokens=False))), f"tokenizer {Path(cand).name}"
    return _heuristic, "heuristic: ASCII chars/4 + other chars/1.5"


def _judge_template_tokens(count: Callable[[str], int]) -> dict[str, int]:
    from .judge import load_template

    return {"answer_judge": count(load_template("answer_judge_v1")), "reasoning_judge": count(load_template("reasoning_judge_v1"))}


def _per_source(cfg: PipelineConfig, train: list[dict], t_count, j_count) -> dict[str, dict]:
    from .prompts import build_prompt

    tmpl = _judge_template_tokens(j_count)
    n, t_out, j_out = cfg.teacher.n, cfg.teacher.max_tokens, cfg.judge.max_tokens
    out: dict[str, dict] = {}
    for r in train:
        p = build_prompt(r, cfg.prompts)
        text = "".join(m["content"] for m in p["messages"]) + p["prefix"]
        s = out.setdefault(r["repo_name"], {"prompts": 0, "example_prompt": text,
                                           **{f"{rt}_{k}": 0 for rt in ROUTES for k in ("requests", "in", "out")}})
        s["prompts"] += 1
        q = j_count(str(r.get("question") or "")) + j_count(str(r.get("answer") or ""))
        calls = {"teacher": (t_count(text) + TEMPLATE_OVERHEAD_TOKENS, t_out),
                 "answer_judge": (tmpl["answer_judge"] + q + min(t_out, j_out), j_out),
                 "reasoning_judge": (tmpl["reasoning_judge"] + q + t_out, j_out)}
        for rt, (tin, tout) in calls.items():
            s[f"{rt}_requests"] += n
            s[f"{rt}_in"] += n * tin
            s[f"{rt}_out"] += n * tout
    return out


def _money(role: LLMRole, tin: int, tout: int) -> float:
    return tin / 1e6 * role.price_per_m_input + tout / 1e6 * role.price_per_m_output


def dry_run(cfg: PipelineConfig, limit: int | None = None) -> dict[str, Any]:
    """The estimate as a dict (see the module doc); ``to_markdown`` renders it."""
    from .ingest import ingest_sources

    records, quarantine = ingest_sources(cfg.data.sources, limit if limit is not None else cfg.limit)
    train, heldout = split_heldout(records, {s.name for s in cfg.data.sources if s.role == "eval"}, cfg.data.eval_holdout)
    t_count, t_how = token_counter(cfg.teacher)
    j_count, j_how = token_counter(cfg.judge)
    per = _per_source(cfg, train, t_count, j_count)
    rec_n, q_n, held_n = Counter(r["repo_name"] for r in records), Counter(q["repo_name"] for q in quarantine), Counter(r["repo_name"] for r in heldout)
    role_of = {s.name: s.role for s in cfg.data.sources}
    sources = []
    for name in [s.name for s in cfg.data.sources]:
        row = {"source": name, "role": role_of[name], "records": rec_n.get(name, 0), "quarantined": q_n.get(name, 0),
               "heldout": held_n.get(name, 0), **{k: v for k, v in per.get(name, {}).items()}}
        row.setdefault("prompts", 0)
        sources.append(row)
    totals = {f"{rt}_{k}": sum(s.get(f"{rt}_{k}", 0) for s in sources) for rt in ROUTES for k in ("requests", "in", "out")}
    judge_in = totals["answer_judge_in"] + totals["reasoning_judge_in"]
    judge_out = totals["answer_judge_out"] + totals["reasoning_judge_out"]
    cost = {"teacher": _money(cfg.teacher, totals["teacher_in"], totals["teacher_out"]), "judge": _money(cfg.judge, judge_in, judge_out)}
    cost["total"] = cost["teacher"] + cost["judge"]
    wall = {"teacher": totals["teacher_out"] / cfg.teacher.tokens_per_s if cfg.teacher.tokens_per_s else None,
            "judge": judge_out / cfg.judge.tokens_per_s if cfg.judge.tokens_per_s else None}
    return {"profile": cfg.profile, "records": len(records), "quarantined": len(quarantine), "train": len(train),
            "heldout": len(heldout), "sources": sources, "totals": totals, "cost_usd": cost, "wall_time_s": wall,
            "token_count": {"teacher": t_how, "judge": j_how}, "upper_bounds": "outputs at max_tokens; every trace judged"}


def _dur(s: float | None) -> str:
    if s is None:
        return "unknown (set tokens_per_s)"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def to_markdown(est: dict[str, Any], examples: bool = True) -> str:
    """Tables: per source and route (requests, input/output tokens), totals, cost, wall time."""
    lines = [f"# finr1 dry run ({est['profile']})", "",
             f"{est['records']} records ({est['quarantined']} quarantined), {est['train']} to distil, {est['heldout']} held out for eval. "
             f"Tokens: teacher by {est['token_count']['teacher']}; judge by {est['token_count']['judge']}. "
             f"Upper bounds: {est['upper_bounds']}.", "",
             "| source | role | records | quarantined | held out | prompts | teacher in | teacher out | judge requests | judge in | judge out |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in est["sources"]:
        jr = s.get("answer_judge_requests", 0) + s.get("reasoning_judge_requests", 0)
        ji = s.get("answer_judge_in", 0) + s.get("reasoning_judge_in", 0)
        jo = s.get("answer_judge_out", 0) + s.get("reasoning_judge_out", 0)
        lines.append(f"| {s['source']} | {s['role']} | {s['records']} | {s['quarantined']} | {s['heldout']} | {s['prompts']} | "
                     f"{s.get('teacher_in', 0):,} | {s.get('teacher_out', 0):,} | {jr} | {ji:,} | {jo:,} |")
    t = est["totals"]
    lines += ["", "| route | requests | input tokens | output tokens |", "|---|---:|---:|---:|"]
    lines += [f"| {rt} | {t[f'{rt}_requests']:,} | {t[f'{rt}_in']:,} | {t[f'{rt}_out']:,} |" for rt in ROUTES]
    c, w = est["cost_usd"], est["wall_time_s"]
    lines += ["", f"Cost at the configured prices: teacher ${c['teacher']:,.2f}, judge ${c['judge']:,.2f}, total ${c['total']:,.2f}.",
              f"Wall time at the configured throughput: teacher {_dur(w['teacher'])}, judge {_dur(w['judge'])}."]
    if examples:
        lines += ["", "## One rendered teacher prompt per source", ""]
        for s in est["sources"]:
            if s.get("example_prompt"):
                lines += [f"### {s['source']}", "", "```", s["example_prompt"][:1500], "```", ""]
    return "\n".join(lines)
