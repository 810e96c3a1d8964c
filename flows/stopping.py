"""Stopping a run cleanly: Ctrl-C and SIGTERM for `finr1 run` and `finr1 retry-failed`.

The flow runs in a thread of its own; the main thread only waits for it and handles the signals
(Prefect swaps its own SIGTERM handler in during a flow run on the main thread, and its temporary
API server dies with a Ctrl-C sent to the terminal's process group, so nothing that talks to the
API may decide how the process ends).

- **First Ctrl-C** (SIGINT): no teacher request starts any more (``finr1_core.distill.stop_requests``:
  the request queue drops what is pending, every worker's client refuses new attempts and
  retries); the requests in flight get up to ``SIGINT_GRACE_S`` to answer, and each answer is
  cached by its worker as it arrives, so a re-run pays nothing for it. Then every process the
  run started (the temporary Prefect server, Ray's GCS, raylet, agents and workers, a model
  server) is ended, the run's lease released, the temporary files removed, and the process
  exits 130 without waiting for the Prefect API.
- **SIGTERM**: the same with ``SIGTERM_GRACE_S``, exit 143.
- **A second signal** during the wait: the same at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable

SIGINT_GRACE_S = 8.0  # stop within 10 s of a Ctrl-C, answers in flight included
SIGTERM_GRACE_S = 3.0
KILL_GRACE_S = 2.0  # SIGTERM to the run's processes, SIGKILL after this


class _Stopper:
    def __init__(self, cleanup: list[Callable[[], None]], log: Callable[[str], None]):
        self.cleanup, self.log = cleanup, log
        self.signals = 0
        self.t0 = 0.0

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            self.log(f"{name} again: stopping now")
            self.teardown(128 + signum, KILL_GRACE_S / 4)
        self.t0 = time.monotonic()
        grace = SIGINT_GRACE_S if signum == signal.SIGINT else SIGTERM_GRACE_S
        self.log(f"{name}: stopping; no new teacher request is sent, answers in flight are cached (up to {grace:.0f}s; "
                 f"{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'} again stops at once)")
        from finr1_core.distill import stop_requests

        left = stop_requests(grace, self.log)
        if left > 0:
            self.log(f"{left} teacher request(s) still in flight after {grace:.0f}s: cancelled (a re-run sends them again)")
        self.teardown(128 + signum, KILL_GRACE_S)

    def teardown(self, code: int, kill_grace_s: float) -> None:
        """End every process this run started, release the lease, remove temporary files, exit ``code``."""
        from finr1_core.distill import child_processes, end_processes, remove_temp_dir

        procs = child_processes()  # a snapshot first: agents lose their parent when the raylet ends
        end_processes(procs, kill_grace_s)
        remove_temp_dir()
        from flows.runs import release_held_leases

        runs = release_held_leases()
        for fn in self.cleanup:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        hint = "; ".join(f"resume: finr1 run --run-id {r}" for r in runs)
        self.log(f"stopped after {time.monotonic() - self.t0:.1f}s ({len(procs)} process(es) ended){'; ' + hint if hint else ''}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_stoppable(fn: Callable[[], Any], cleanup: list[Callable[[], None]] | None = None,
                  log: Callable[[str], None] | None = None) -> Any:
    """``fn()`` (a flow call) in its own thread, with the main thread handling SIGINT and SIGTERM
    as the module docstring says. Returns ``fn``'s result or raises its exception. Local Ray is
    shut down from that thread before it ends (Ray's GCS and raylet die with the thread that
    started them)."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out: dict[str, Any] = {}

    def target() -> None:
        from finr1_core.distill import ray_shutdown

        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            out["error"] = e
        finally:
            ray_shutdown()

    stopper = _Stopper(list(cleanup or []), log)
    previous = {s: signal.signal(s, stopper.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t = threading.Thread(target=target, name="finr1-run")
    try:
        t.start()
        while t.is_alive():
            t.join(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if "error" in out:
        raise out["error"]
    return out["value"]
