"""Is a trial's worker alive? Its identity and the process check (the heartbeat it keeps while training is
search.lifecycle.Heartbeat).

A worker killed mid-trial (SIGKILL, power loss, preemption) leaves its trial RUNNING forever; it would
block the count of trained trials and TPE would keep "lying" about it. Three ways to notice (applied by
search.lifecycle.reap_dead_trials):
  * same machine (hostname and boot id): the recorded pid is gone, or is another process now (its start
    time differs). Immediate, so a plain resume never waits for a grace period;
  * RDB storages: Optuna's heartbeat (storage.HEARTBEAT_INTERVAL / GRACE_PERIOD), for other machines;
  * journal files (no heartbeat in Optuna 5): a `heartbeat_at` user attr refreshed by the same thread.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["worker_identity", "process_alive", "same_machine"]


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
