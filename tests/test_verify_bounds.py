"""Every rule comparison finishes in bounded time, in any thread: expression bombs get verdict
unknown with a reason starting "timeout" (or "number out of range"), through `verify`, the
`finr1 verify` command and `route.score_traces` (the score shard's function)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from finr1_core import mathguard
from finr1_core.config import FilterConfig
from finr1_core.route import score_traces
from finr1_core.verify import verify

REPO = Path(__file__).resolve().parent.parent
PER_ROW_S = 5.0

NESTED_FRAC = r"\frac{1}{" * 20 + "2" + "}" * 20
BOMBS = [  # (prediction, reason prefix)
    (r"\boxed{9^{9^{9^{9^{9}}}}}", "timeout: exponent tower"),
    (r"\boxed{9^{999999999}}", "timeout: exponent larger than"),
    (r"\boxed{2^{2^{100}}}", "timeout: exponent tower"),
    (r"\boxed{100000!}", "timeout: factorial"),
    (r"\boxed{(10!)!}", "timeout: factorial"),
    (r"\boxed{\frac{10^{6}!}{3}}", "timeout: factorial"),
    ("\\boxed{" + NESTED_FRAC + "}", "timeout: nesting deeper than"),
    (r"\boxed{\sqrt{" + "9" * 300 + "}}", "timeout: integer with more than"),
    (r"\boxed{" + "9" * 50000 + "}", "number out of range"),
    (r"\boxed{1.5 \times 10^{99999}}", "number out of range"),
]


def _timed_verify(gold, pred, atype="numeric"):
    t = time.monotonic()
    v = verify(gold, pred, atype)
    return v, time.monotonic() - t


@pytest.mark.parametrize("pred,reason", BOMBS, ids=[f"bomb{i}" for i in range(len(BOMBS))])
def test_bomb_in_worker_thread_is_unknown_and_fast(pred, reason):
    with ThreadPoolExecutor(1) as ex:  # not the main thread: signal-based timeouts would not work here
        v, dt = ex.submit(_timed_verify, "1", pred).result(timeout=60)
    assert v.verdict == "unknown" and v.reason.startswith(reason), v.reason
    assert dt < PER_ROW_S


def test_bombs_with_inferred_type_and_unclosed_boxes():
    for pred in ("\\boxed{" * 50000, r"<think>" + "\\boxed{1" * 20000 + "</think>"):
        v, dt = _timed_verify("1", pred, None)
        assert dt < PER_ROW_S and v.verdict in ("unknown", "incorrect")
    v, dt = _timed_verify(r"9^{9^{9}}", r"\boxed{1}", None)  # a bomb in the gold is not evaluated either
    assert dt < PER_ROW_S and v.verdict == "unknown" and v.reason.startswith("timeout"), v.reason


def test_small_symbolic_answers_still_decided():
    assert verify("120", r"\boxed{5!}", "numeric").verdict == "correct"
    assert verify("130", r"\boxed{5!}", "numeric").verdict == "incorrect"
    assert verify(r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", "numeric").verdict == "correct"
    assert verify("1024", r"\boxed{2^{10}}", "numeric").verdict == "correct"


def test_worker_timeout_kills_and_recovers():
    """The hard bound: a call that does not answer in time is killed, reported as a timeout, and the
    next call gets a fresh worker."""
    mathguard.math_verify("1", "1")  # worker up
    old = mathguard._worker.proc.pid if mathguard._worker else None
    with ThreadPoolExecutor(1) as ex:
        ok, val, problem = ex.submit(mathguard.math_verify, r"\frac{1}{2}", r"\sqrt{\frac{1}{4}}", 0.0001).result(timeout=30)
    assert (ok, val) == (None, None) and problem.startswith("timeout: math-verify took over"), problem
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    assert mathguard.math_verify(r"\frac{1}{2}", r"\sqrt{\frac{1}{4}}") == (True, 0.5, None)


def test_cli_verify_bombs(tmp_path):
    rows = [{"gold": "1", "prediction": p, "answer_type": "numeric"} for p, _ in BOMBS] + [{"gold": "1", "prediction": r"\boxed{1}"}]
    f = tmp_path / "bombs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "flows.cli", "verify", str(f), "--out", str(out)], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    dt = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["verdict"] for g in got] == ["unknown"] * len(BOMBS) + ["correct"]
    assert all(g["verify_reason"].startswith(reason) for g, (_, reason) in zip(got, BOMBS))
    assert dt < 30 + PER_ROW_S * len(rows) / 4  # interpreter start-up plus a few seconds for all rows
    assert f"verified {len(rows)} rows: correct 1, incorrect 0, unknown {len(BOMBS)}" in r.stderr


def test_score_traces_bombs_rules_only():
    recs = {f"r{i}": {"id": f"r{i}", "repo_name": "finqa", "question": "q?", "answer": "1", "answer_type": "numeric",
                      "module": "金融推理类业务知识", "language": "en"} for i in range(len(BOMBS))}
    traces = [{"key": f"k{i}", "record_id": f"r{i}", "text": f"<think>\nstep\n</think>\n\n{p}", "finish_reason": "stop"}
              for i, (p, _) in enumerate(BOMBS)]
    t = time.monotonic()
    with ThreadPoolExecutor(1) as ex:
        rows = ex.submit(score_traces, traces, recs, None, FilterConfig()).result(timeout=120)
    assert time.monotonic() - t < PER_ROW_S * len(BOMBS)
    assert [r["verdict"] for r in rows] == ["unknown"] * len(BOMBS)
    assert all(r["verify_reason"].startswith(reason) for r, (_, reason) in zip(rows, BOMBS))
    assert all(r["route"] == "rl" and r["answer_judge_error"] == "not judged: no judge client" for r in rows)
