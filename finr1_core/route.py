"""SFT/RL routing and the filter stage's scoring entry point.

Fin-R1's two rounds:

1. **Answer** – the rule verifier first; rows it cannot decide (``unknown``) go to the answer
   judge.
2. **Reasoning** – rows whose answer is correct go to the reasoning judge (7 criteria).

``route(row)``: answer correct (rule ``correct``, or rule ``unknown`` and answer judge 1) **and**
reasoning judge 1 -> ``sft``; everything else -> ``rl`` with a ``route_reason``. Empty, truncated
and unclosed-think traces go to ``rl`` with that reason and are never sent to a judge.

Route reasons (stable strings, counted in the release card):

==========================  ==========================================================
``sft``                     ``answer_correct_rule+reasoning_1`` / ``answer_correct_judge+reasoning_1``
``empty``                   the trace has no text
``truncated``               finish_reason ``length``
``no_think_close``          the think block was never closed
``answer_incorrect_rule``   the rule verifier said incorrect
``answer_judge_0``          rule unknown, the answer judge said 0
``answer_unknown``          rule unknown and the judge unknown (or not run)
``reasoning_judge_0``       answer correct, the reasoning judge said 0
``reasoning_unknown``       answer correct, reasoning judge unknown (or not run)
==========================  ==========================================================
"""
from __future__ import annotations

from typing import Any

from .config import FilterConfig
from .judge import ANSWER_JUDGE_VERSION, REASONING_JUDGE_VERSION, AnswerJudge, JudgeUsage, ReasoningJudge, ajudge_many, run_sync, with_close
from .verify import verify

FLAG_REASONS = ("empty", "truncated", "no_think_close")


def _flag(row: dict) -> str | None:
    text = row.get("text")
    if row.get("empty") or not ((text or "").strip() or (row.get("reasoning") or "").strip() or (row.get("answer") or "").strip()):
        return "empty"
    if row.get("truncated") or row.get("finish_reason") == "length":
        return "truncated"
    if row.get("no_think_close"):
        return "no_think_close"
    return None


def answer_status(row: dict) -> tuple[bool | None, str]:
    """(answer correct?, how): True/'rule', True/'judge', False/..., None/'answer_unknown'."""
    v = row.get("verdict")
    if v == "correct":
        return True, "rule"
    if v == "incorrect":
        return False, "answer_incorrect_rule"
    aj = row.get("answer_judge")
    if aj == 1:
        return True, "judge"
    if aj == 0:
        return False, "answer_judge_0"
    return None, "answer_unknown"


def route(row: dict) -> tuple[str, str]:
    """``("sft"|"rl", route_reason)`` for a scored trace row (see the module docstring)."""
    flag = _flag(row)
    if flag:
        return "rl", flag
    ok, how = answer_status(row)
    if not ok:
        return "rl", how
    rj = row.get("reasoning_judge")
    if rj == 1:
        return "sft", f"answer_correct_{how}+reasoning_1"
    if rj == 0:
        return "rl", "reasoning_judge_0"
    return "rl", "reasoning_unknown"


def _trace_text(t: dict) -> str:
    if t.get("text"):
        return t["text"]
    reasoning, answer = t.get("reasoning") or "", t.get("answer") or ""
    if reasoning:
        return f"<think>\n{reasoning}\n</think>\n\n{answer}"
    return answer


def _question_with_choices(rec: dict, fallback: str) -> str:
    q = rec.get("question") or fallback or ""
    ch = rec.get("choices")
    if isinstance(ch, dict) and ch:
        q = q + "\n" + "\n".join(f"{k}、{v}" for k, v in sorted(ch.items()) if v is not None)
    return q


def _domain(rec: dict, trace: dict) -> str:
    module = rec.get("module") or trace.get("module")
    src = rec.get("repo_name") or trace.get("repo_name")
    return " / ".join(x for x in (module, src) if x) or "金融"


def _record(t: dict, records_by_id: dict) -> dict:
    """The trace's record, falling back to the gold fields the trace carries (``gold_answer``...)."""
    rec = records_by_id.get(t.get("record_id")) if records_by_id else None
    if rec:
        return rec
    if t.get("gold_answer") is not None:
        return {"answer": t.get("gold_answer"), "answer_type": t.get("answer_type"), "module": t.get("module"),
                "repo_name": t.get("repo_name"), "choices": t.get("choices")}
    return {}


def verify_traces(traces: list[dict], records_by_id: dict, cfg: FilterConfig | None = None) -> list[dict]:
    """Round 1, rule part only: copy each trace and add gold/answer_type/module, verdict, extracted,
    verify_reason. Traces whose record is missing get verdict unknown with that reason."""
    cfg = cfg or FilterConfig()
    out = []
    for t in traces:
        row = dict(t)
        rec = _record(t, records_by_id)
        if not row.get("module") and rec.get("module"):
            row["module"] = rec["module"]
        if not row.get("repo_name") and rec.get("repo_name"):
            row["repo_name"] = rec["repo_name"]
        if not row.get("language") and rec.get("language"):
            row["language"] = rec["language"]
        row["gold"] = rec.get("answer")
        row["answer_type"] = rec.get("answer_type") or t.get("answer_type")
        if not rec:
            row.update(verdict="unknown", extracted=None, verify_reason="record not found")
        else:
            v = verify(rec.get("answer"), _trace_text(t), rec.get("answer_type"),
                       question=_question_with_choices(rec, t.get("question")), rel_tol=cfg.rel_tol)
            row.update(verdict=v.verdict, extracted=v.extracted, verify_reason=v.reason)
        out.append(row)
    return out


async def ascore_traces(traces: list[dict], records_by_id: dict, judge_client, cfg: FilterConfig | None = None,
                        *, answer_template: str = ANSWER_JUDGE_VERSION, reasoning_template: str = REASONING_JUDGE_VERSION,
                        concurrency: int | None = None, usage: JudgeUsage | None = None) -> list[dict]:
    """Async form of :func:`score_traces` (does not close the client)."""
    cfg = cfg or FilterConfig()
    rows = verify_traces(traces, records_by_id, cfg)
    conc = concurrency or getattr(judge_client, "max_concurrency", 8) or 8
    aj = AnswerJudge(judge_client, answer_template, retries=cfg.judge_retries, usage=usage) if judge_client is not None else None
    rj = ReasoningJudge(judge_client, reasoning_template, retries=cfg.judge_retries, usage=usage) if judge_client is not None else None
    for r in rows:
        r.update(answer_judge=None, answer_judge_raw=None, answer_judge_attempts=0, answer_judge_error=None,
                 answer_judge_version=answer_template,
                 reasoning_judge=None, reasoning_judge_raw=None, reasoning_judge_attempts=0, reasoning_judge_error=None,
                 reasoning_judge_version=reasoning_template)

    def item(r: dict) -> dict:
        rec = _record(r, records_by_id)
        reasoning = r.get("reasoning")
        answer = r.get("answer")
        if reasoning is None and answer is None:
            from .extract import split_think
            reasoning, answer = split_think(_trace_text(r))
        return dict(question=_question_with_choices(rec, r.get("question")), gold=str(rec.get("answer") or ""),
                    candidate=answer or "", reasoning=reasoning or "", domain=_domain(rec, r),
                    instruction=rec.get("question") or r.get("question") or "")

    # round 1: answer judge on rule-unknown rows (with a gold answer to compare against)
    todo = [r for r in rows if _flag(r) is None and r["verdict"] == "unknown" and r.get("gold") not in (None, "")]
    if aj is not None and todo:
        res = await ajudge_many(aj, [item(r) for r in todo], conc)
        for r, jr in zip(todo, res):
            r.update(answer_judge=jr.score, answer_judge_raw=jr.raw, answer_judge_attempts=jr.attempts,
                     answer_judge_error=jr.error)
    for r in rows:
        if r["verdict"] != "unknown":
            r["answer_judge_error"] = "not judged: decided by rule"
        elif _flag(r):
            r["answer_judge_error"] = f"not judged: {_flag(r)}"
        elif aj is None:
            r["answer_judge_error"] = "not judged: no judge client"
    # round 2: reasoning judge on rows whose answer is correct
    todo2 = [r for r in rows if _flag(r) is None and answer_status(r)[0] is True]
    if rj is not None and todo2:
        res = await ajudge_many(rj, [item(r) for r in todo2], conc)
        for r, jr in zip(todo2, res):
            r.update(reasoning_judge=jr.score, reasoning_judge_raw=jr.raw, reasoning_judge_attempts=jr.attempts,
                     reasoning_judge_error=jr.error)
    for r in rows:
        if r["reasoning_judge_attempts"] == 0 and r["reasoning_judge_error"] is None:
            r["reasoning_judge_error"] = ("not judged: no judge client" if rj is None and answer_status(r)[0] and not _flag(r)
                                          else "not judged: answer not correct or trace flagged")
        ok, how = answer_status(r)
        r["answer_correct"] = ok
        r["answer_source"] = how if ok else None
        r["route"], r["route_reason"] = route(r)
    return rows


def score_traces(traces: list[dict], records_by_id: dict, judge_client, cfg: FilterConfig | None = None,
                 **kw: Any) -> list[dict]:
    """Score and route distilled traces (the filter stage's entry point).

    Returns one new dict per trace, with the trace's own columns plus ``gold``, ``answer_type``,
    ``module``, ``verdict``, ``extracted``, ``verify_reason``, ``answer_judge`` (1/0/None),
    ``answer_judge_raw/attempts/error/version``, ``reasoning_judge`` and the same four,
    ``answer_correct``, ``answer_source`` (rule/judge), ``route`` and ``route_reason``.
    ``judge_client`` may be None (rules only: nothing reaches SFT without a reasoning judge).
    ``usage`` (a :class:`~finr1_core.judge.JudgeUsage`) counts the judge requests and tokens.
    The client's connections are closed at the end, so the same client can be reused later.
    """
    if judge_client is None:
        return run_sync(ascore_traces(traces, records_by_id, None, cfg, **kw))
    return run_sync(with_close(judge_client, ascore_traces(traces, records_by_id, judge_client, cfg, **kw)))


def score_shard_rows(traces: list[dict], records_by_id: dict, judge_client, cfg: FilterConfig | None = None,
                     judge_role: Any | None = None, **kw: Any) -> tuple[list[dict], dict]:
    """:func:`score_traces` plus the judge metering of this shard: ``(rows, extra)`` where
    ``extra`` (:meth:`JudgeUsage.as_extra`, priced with ``judge_role`` when given) goes into the
    score shard's manifest ``extra`` for the run's cost table."""
    usage = JudgeUsage()
    rows = score_traces(traces, records_by_id, judge_client, cfg, usage=usage, **kw)
    return rows, usage.as_extra(judge_role)


__all__ = ["route", "score_traces", "score_shard_rows", "ascore_traces", "verify_traces", "answer_status", "FLAG_REASONS"]
