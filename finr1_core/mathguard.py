"""Time-bounded symbolic comparison: a guarded parse, then math-verify in a killable worker process.

math-verify (sympy) can run for minutes on inputs such as ``9^{9^{9^{9^{9}}}}`` or ``(10!)!``, and
its own timeouts use signals, which work in the main thread only. So, in any thread or process:

1. :func:`guard` rejects, before sympy sees them, expressions that are too long, nested too deeply,
   exponent towers, huge exponents, factorials of large or non-literal operands and giant integers.
2. :func:`math_verify` runs what passes in a worker subprocess (``python -m finr1_core.mathguard``),
   one per calling process, started on first use. A call that does not answer within
   ``timeout_s`` kills the worker (the next call starts a fresh one) and returns ``TIMEOUT``.

The worker is a plain subprocess talking JSON lines over a pipe, so it works under threads, Ray
actors, Prefect workers and daemonic processes alike; it exits when its parent closes the pipe.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_CHARS = 400
MAX_DEPTH = 12
MAX_EXPONENT = 1000
MAX_FACTORIAL = 200
MAX_DIGITS = 100
DEFAULT_TIMEOUT_S = float(os.environ.get("FINR1_VERIFY_TIMEOUT_S", "3"))
STARTUP_TIMEOUT_S = 120.0
TIMEOUT = "timeout"

_POW = re.compile(r"(?:\^|\*\*)\s*")
_FACT = re.compile(r"((?<!\d)\d+|[)}\]])\s*!(?!=)|\\(?:factorial|Gamma)\b|\bfactorial\s*\(")
_DIGITS = re.compile(r"\d+")


def _exponent(s: str, i: int) -> str:
    """The exponent starting at ``s[i]``: a braced group, a parenthesised group or one token."""
    if i >= len(s):
        return ""
    close = {"{": "}", "(": ")"}.get(s[i])
    if close is None:
        m = re.match(r"[-+]?[\w.]+", s[i:])
        return m.group(0) if m else s[i]
    depth = 0
    for j in range(i, len(s)):
        if s[j] == s[i]:
            depth += 1
        elif s[j] == close:
            depth -= 1
            if depth == 0:
                return s[i + 1:j]
    return s[i + 1:]


def _depth(s: str) -> int:
    d = best = 0
    for c in s:
        if c in "{([":
            d += 1
            best = max(best, d)
        elif c in "})]":
            d = max(d - 1, 0)
    return best


def guard(expr: str) -> str | None:
    """Why ``expr`` must not reach sympy (one short phrase), or None when it is safe to evaluate."""
    if len(expr) > MAX_CHARS:
        return f"expression longer than {MAX_CHARS} characters"
    if _depth(expr) > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH}"
    if any(len(d) > MAX_DIGITS for d in _DIGITS.findall(expr)):
        return f"integer with more than {MAX_DIGITS} digits"
    for m in _POW.finditer(expr):
        exp = _exponent(expr, m.end())
        if _POW.search(exp) or "\\exp" in exp or "e^" in exp:
            return "exponent tower"
        if any(int(d) > MAX_EXPONENT for d in _DIGITS.findall(exp)):
            return f"exponent larger than {MAX_EXPONENT}"
    for m in (_FACT.finditer(expr) if has_factorial(expr) else ()):
        arg = m.group(1)
        if arg is None or not arg.isdigit() or int(arg) > MAX_FACTORIAL:
            return f"factorial of a non-literal or larger than {MAX_FACTORIAL}"
    return None


def has_factorial(expr: str) -> bool:
    if "!" not in expr and "factorial" not in expr and "Gamma" not in expr:
        return False
    return _FACT.search(expr) is not None


# ---------------------------------------------------------------------------------- the worker
def _compare(gold: str, pred: str, inner_timeout: int) -> dict:
    from math_verify import parse, verify

    g = parse(f"${gold}$" if "$" not in gold else gold, parsing_timeout=inner_timeout)
    p = parse(f"${pred}$" if "$" not in pred else pred, parsing_timeout=inner_timeout)
    if not g or not p:
        return {"ok": None, "val": None}
    ok = bool(verify(g, p, timeout_seconds=inner_timeout))
    val = None
    try:
        if getattr(p[0], "is_number", False):
            val = float(p[0].evalf())
    except Exception:  # noqa: BLE001 - a value we cannot take is just no value
        val = None
    return {"ok": ok, "val": val if val is None or val == val else None}


def _serve() -> None:  # pragma: no cover - runs in the worker subprocess
    import logging

    logging.disable(logging.WARNING)  # math-verify logs its own timeouts; the parent reports them
    import math_verify  # noqa: F401 - imported once, before "ready"

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = _compare(req["gold"], req["pred"], max(1, int(req.get("inner_timeout", 2))))
        except Exception as e:  # noqa: BLE001 - an unparseable pair is "no answer", never a crash
            res = {"ok": None, "val": None, "error": type(e).__name__}
        out.write(json.dumps(res) + "\n")
        out.flush()


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finr1_core.mathguard"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
        )
        self.pid = os.getpid()
        if self._read(STARTUP_TIMEOUT_S) is None:
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def ask(self, gold: str, pred: str, timeout: float) -> dict | None:
        self.proc.stdin.write(json.dumps({"gold": gold, "pred": pred, "inner_timeout": max(1, int(timeout) - 1)}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_lock = threading.Lock()
_worker: _Worker | None = None


def _get_worker() -> _Worker:
    global _worker
    if _worker is None or _worker.pid != os.getpid() or _worker.proc.poll() is not None:
        _worker = _Worker()
    return _worker


def math_verify(gold: str, pred: str, timeout_s: float | None = None) -> tuple[bool | None, float | None, str | None]:
    """(equal?, numeric value of ``pred`` if any, problem) where problem is None, ``"timeout: ..."``
    (guard rejected or the worker ran out of time) or ``"math-verify unavailable"``."""
    global _worker
    for side in (gold, pred):
        why = guard(side)
        if why:
            return None, None, f"{TIMEOUT}: {why} (not evaluated)"
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    with _lock:
        try:
            w = _get_worker()
        except (OSError, RuntimeError):
            return None, None, "math-verify unavailable"
        t0 = time.monotonic()
        try:
            res = w.ask(gold, pred, timeout)
        except (OSError, ValueError):
            res = None
        if res is None:
            w.kill()
            _worker = None
            if time.monotonic() - t0 >= timeout * 0.99:
                return None, None, f"{TIMEOUT}: math-verify took over {timeout:g} s"
            return None, None, "math-verify unavailable"
    return res.get("ok"), res.get("val"), None


@atexit.register
def _stop() -> None:
    w = _worker
    if w is not None and w.pid == os.getpid():
        w.kill()


if __name__ == "__main__":  # pragma: no cover
    _serve()
