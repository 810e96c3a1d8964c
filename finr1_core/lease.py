"""One owner per run id: a lease object ``<root>/<run_id>/_lease.json`` taken before any work.

The lease holds the owner, host, PID, a random token and the start and heartbeat times. It is
taken atomically and renewed by a heartbeat thread:

- locally, every read-modify-write happens under an ``flock`` on ``_lease.lock`` next to it, and a
  new lease appears with ``os.link`` (fails when one exists), so a reader never sees half a file;
- on ``s3://``, a new lease is a conditional PUT (``If-None-Match: *``); the heartbeat, a takeover
  and the release are conditional on the ETag last seen (``If-Match``). Two takers can never both
  win: the second PUT fails with 412. (Both AWS S3 and moto's server honour these headers.)

A lease whose heartbeat is older than its ``ttl_s`` belongs to a crashed owner and is taken over;
so is, at once, a lease whose holder ran on this host and whose process is gone (PID and start time).
Staleness compares the holder's recorded wall-clock heartbeat with this host's clock, so hosts
sharing a storage root should keep their clocks in sync (NTP); ``ttl_s`` is the margin.

Usage (at the top of a run, before anything is written)::

    with RunLease(cfg.storage_root, cfg.run_id, owner="flow-run abc", wait=False) as lease:
        ...                # lease.ensure() between stages raises LeaseLost if it was taken over

A second taker on a live lease raises :class:`LeaseHeld` (one line naming the holder), or with
``wait=True`` blocks until the lease is released or expires.
"""
from __future__ import annotations

import errno
import getpass
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable

from finr1_core.storage import Store

LEASE_FILE = "_lease.json"


class LeaseHeld(RuntimeError):
    """The run id is held by a live owner (one line naming it)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class LeaseLost(RuntimeError):
    """This owner's lease was taken over (its heartbeat stalled past the ttl) or removed."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def default_owner() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc), or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def holder_dead(doc: dict) -> bool:
    """The holder ran on this host and its process is gone (or its PID now names another process)."""
    if doc.get("host") != socket.gethostname() or not doc.get("pid") or not os.path.isdir("/proc/self"):
        return False
    start = proc_start(int(doc["pid"]))
    return start is None or (doc.get("pid_start") is not None and start != doc["pid_start"])


def is_stale(doc: dict, now: float | None = None) -> bool:
    """The holder's heartbeat is older than its ttl, or the holder is a dead process of this host
    (a killed run's lease is taken over at once, not after the ttl)."""
    now = time.time() if now is None else now
    return now - float(doc.get("heartbeat", 0)) > float(doc.get("ttl_s", 0)) or holder_dead(doc)


def describe_holder(doc: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    age = now - float(doc.get("heartbeat", 0))
    return (f"{doc.get('owner')} (host {doc.get('host')}, pid {doc.get('pid')}, since {doc.get('started_at')}, "
            f"last heartbeat {age:.0f}s ago, expires after {float(doc.get('ttl_s', 0)):.0f}s without one)")


class RunLease:
    """The lease on one run id. A context manager: takes it on enter, releases it on exit."""

    def __init__(self, store_root: str, run_id: str, owner: str | None = None, ttl_s: float = 120.0,
                 heartbeat_s: float | None = None, wait: bool = False, wait_timeout_s: float | None = None,
                 storage_options: dict | None = None, log: Callable[[str], None] | None = None):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.store = Store(store_root, run_id, storage_options)
        self.run_id = run_id
        self.owner = owner or default_owner()
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else max(self.ttl_s / 4, 0.05)
        if self.heartbeat_s >= self.ttl_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be shorter than ttl_s ({self.ttl_s})")
        self.wait = wait
        self.wait_timeout_s = wait_timeout_s
        self.log = log or (lambda m: None)
        self.uri = self.store.uri(LEASE_FILE)
        self.path = self.store.fs_path(self.uri)
        self.local = self.store.is_local
        self.token = uuid.uuid4().hex
        self.started_at = ""
        self.etag: str | None = None
        self.held = False
        self.lost = threading.Event()
        self.took_over: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    def acquire(self) -> "RunLease":
        deadline = None if self.wait_timeout_s is None else time.monotonic() + self.wait_timeout_s
        said = False
        while True:
            holder = self._try_take()
            if holder is None:
                break
            msg = self.held_message(holder)
            if not self.wait or (deadline is not None and time.monotonic() > deadline):
                raise LeaseHeld(msg, holder)
            if not said:
                self.log(f"waiting for run {self.run_id}: held by {describe_holder(holder)}")
                said = True
            time.sleep(min(self.heartbeat_s, 2.0, max(0.05, float(holder.get("ttl_s", 1)) / 4)))
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.heartbeat_s * 2))
            self._thread = None
        if self.held and not self.lost.is_set():
            self._remove_if_ours()
        self.held = False

    def ensure(self) -> None:
        """Raise :class:`LeaseLost` if another owner has taken this run id over."""
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id}: lease lost (another owner took it over after the heartbeat stalled past {self.ttl_s:.0f}s); stop writing")

    def read(self) -> dict | None:
        """The current lease document, or None."""
        doc, _ = self._read()
        return doc

    def __enter__(self) -> "RunLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _doc(self, now: float) -> dict:
        return {"run_id": self.run_id, "owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": proc_start(os.getpid()),
                "token": self.token, "started_at": self.started_at or _iso(now), "heartbeat_at": _iso(now),
                "heartbeat": now, "ttl_s": self.ttl_s, "heartbeat_s": self.heartbeat_s}

    def held_message(self, holder: dict) -> str:
        retry = f"finr1 run --run-id {self.run_id} --wait"
        return (f"run {self.run_id} is in use by {describe_holder(holder)}: wait for it with `{retry}`, "
                f"or re-run once its heartbeat is older than {float(holder.get('ttl_s', 0)):.0f}s to take the lease over")

    def _try_take(self) -> dict | None:
        """Take the lease; None on success, else the live holder's document."""
        now = time.time()
        self.started_at = _iso(now)
        if self.local:
            with self._flock():
                return self._take_local(now)
        return self._take_s3(now)

    def _take_local(self, now: float) -> dict | None:
        doc, _ = self._read()
        if doc is not None and not is_stale(doc, now):
            return doc
        data = json.dumps(self._doc(now), indent=2).encode()
        if doc is None:
            tmp = f"{self.path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # fails if a lease appeared meanwhile (belt and braces: we hold the flock)
            except FileExistsError:
                return self._read()[0] or {}
            finally:
                os.unlink(tmp)
        else:
            self.took_over = doc
            self._replace_local(data)
        return None

    def _take_s3(self, now: float) -> dict | None:
        doc, etag = self._read()
        if doc is not None and not is_stale(doc, now):
            return doc
        data = json.dumps(self._doc(now), indent=2).encode()
        try:
            if doc is None:
                out = self.store.fs.pipe_file(self.path, data, mode="create")
            else:
                out = self.store.fs.pipe_file(self.path, data, IfMatch=etag)
        except (FileExistsError, FileNotFoundError) as e:
            return self._read()[0] or {"owner": f"another taker ({type(e).__name__})", "heartbeat": now, "ttl_s": self.ttl_s}
        except OSError as e:
            if e.errno == errno.EINVAL or "Precondition" in str(e):  # lost the race for the stale lease
                return self._read()[0] or {"owner": "another taker", "heartbeat": now, "ttl_s": self.ttl_s}
            raise
        self.took_over = doc
        self.etag = (out or {}).get("ETag") or self._read()[1]
        return None

    def _read(self) -> tuple[dict | None, str | None]:
        fs = self.store.fs
        try:
            if self.local:
                with open(self.path, "rb") as f:
                    return json.loads(f.read()), None
            fs.invalidate_cache(self.path)
            etag = fs.info(self.path).get("ETag")
            return json.loads(fs.cat_file(self.path)), etag
        except FileNotFoundError:
            return None, None
        except ValueError:  # half-written by a foreign tool: treat as expired
            return {"owner": "unreadable lease", "heartbeat": 0, "ttl_s": 0}, None

    def _replace_local(self, data: bytes) -> None:
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    @contextmanager
    def _flock(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path.rsplit("/", 1)[0] + "/_lease.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _renew(self) -> bool:
        """Write a fresh heartbeat if the lease is still ours; False when it is not."""
        now = time.time()
        data = json.dumps(self._doc(now), indent=2).encode()
        if self.local:
            with self._flock():
                doc, _ = self._read()
                if not doc or doc.get("token") != self.token:
                    return False
                self._replace_local(data)
                return True
        try:
            out = self.store.fs.pipe_file(self.path, data, IfMatch=self.etag)
        except (FileNotFoundError, OSError):
            doc, _ = self._read()
            return bool(doc) and doc.get("token") == self.token  # ours still: a transient error, keep it
        self.etag = (out or {}).get("ETag") or self.etag
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                ok = self._renew()
            except Exception as e:  # storage hiccup: the next beat retries; the ttl is the margin
                self.log(f"lease heartbeat failed ({type(e).__name__}: {e}); retrying")
                continue
            if not ok:
                self.lost.set()
                self.log(f"run {self.run_id}: lease lost to another owner")
                return

    def _remove_if_ours(self) -> None:
        if self.local:
            with self._flock():
                doc, _ = self._read()
                if doc and doc.get("token") == self.token:
                    os.unlink(self.path)
            return
        bucket, key, _ = self.store.fs.split_path(self.path)
        try:
            self.store.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
        except (FileNotFoundError, OSError):
            pass  # already gone, or taken over: not ours to remove
        self.store.fs.invalidate_cache(self.path)


def check_free(store_root: str, run_id: str, storage_options: dict | None = None) -> dict | None:
    """Fail fast before starting anything: raise :class:`LeaseHeld` if a live owner holds ``run_id``.
    Returns the expired holder's document when there is one to take over (else None). Takes nothing:
    the run itself still takes the lease (a race between two runs is settled there)."""
    probe = RunLease(store_root, run_id, storage_options=storage_options)
    doc = probe.read()
    if doc is not None and not is_stale(doc):
        raise LeaseHeld(probe.held_message(doc), doc)
    return doc
