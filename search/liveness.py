"""Is a trial's worker alive? Its identity, the process check, the heartbeat it keeps while training, and
the verdict on a RUNNING trial's worker (`death`).

A worker killed mid-trial (SIGKILL, power loss, preemption) leaves its trial RUNNING forever; it would
block the count of trained trials and TPE would keep "lying" about it. Three ways to notice (applied by
search.lifecycle.reap_dead_trials):
  * same machine (hostname and boot id): the recorded pid is gone, or is another process now (its start
    time differs). Immediate, so a plain resume never waits for a grace period;
  * RDB storages: Optuna's heartbeat (storage.HEARTBEAT_INTERVAL / GRACE_PERIOD), for other machines;
  * journal files (no heartbeat in Optuna 5): a `heartbeat_at` user attr refreshed by the same thread.
What the trial records (its worker, its last beat, its phase) is search.lifecycle's; this module judges it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from optuna.storages import BaseStorage

from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, is_rdb

__all__ = ["Clock", "worker_identity", "process_alive", "same_machine", "death", "Heartbeat"]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
    return stat.rsplit(")", 1)[1].split()[19] if ")" in stat else ""


def worker_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pid": pid,
            "start": _start_time(pid)}


def process_alive(worker: dict[str, Any]) -> bool:
    """Whether the worker process (on this machine) still runs; a zombie or a reused pid counts as dead."""
    pid = int(worker.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    stat = _read(f"/proc/{pid}/stat")
    if stat and stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    start = worker.get("start", "")
    return not start or not stat or _start_time(pid) == start


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("host") == b.get("host") and a.get("boot", "") == b.get("boot", "")


class Clock(NamedTuple):
    """A RUNNING trial's times, time.time() seconds: when it started, its last heartbeat, and now."""

    started: float
    last_beat: float
    now: float


def death(worker: dict[str, Any] | None, me: dict[str, Any], clock: Clock, training: bool, rdb: bool) -> str | None:
    """Why a RUNNING trial's worker is dead, None if it may be alive. `worker`: its recorded identity (None:
    not signed yet); `training`: it holds a training place; `rdb`: the storage is a database, whose
    heartbeat (Optuna's fail_stale_trials) judges training trials."""
    started, last_beat, now = clock
    if worker is None:  # killed between ask() and the first attr: only its age tells
        return "worker vanished before the trial started" if now - started > GRACE_PERIOD else None
    if same_machine(worker, me):
        own = worker.get("pid") == me["pid"] and worker.get("start") == me["start"]
        return None if not own and process_alive(worker) else f"worker pid {worker.get('pid')} died"
    if not rdb or not training:
        # Optuna's heartbeat (RDB) starts with training; before that, and in journal files, our own attr.
        return f"no heartbeat for {now - last_beat:.0f} s" if now - last_beat > GRACE_PERIOD else None
    return None  # RDB: fail_stale_trials judged it


class Heartbeat:
    """`with Heartbeat(storage, trial_id, write):` beats every `interval` seconds in a daemon thread, so that
    other machines can tell the trial's worker is alive. RDB storages: Optuna's own heartbeat; journal files
    (none in Optuna 5): `write(time.time())`, which stores it in the trial's record (search.lifecycle.heartbeat)."""

    def __init__(self, storage: BaseStorage, trial_id: int, write: Callable[[float], None],
                 interval: float = HEARTBEAT_INTERVAL):
        self.storage, self.trial_id, self.write, self.interval = storage, trial_id, write, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def beat(self) -> None:
        try:
            if is_rdb(self.storage) and self.storage.get_heartbeat_interval():
                self.storage.record_heartbeat(self.trial_id)
            else:
                self.write(time.time())
        except Exception:  # a transient storage error must not kill the training it watches
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
