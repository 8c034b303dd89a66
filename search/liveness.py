"""Trials left RUNNING by a dead worker: find them, fail them, queue their candidate again.

A worker killed mid-trial (SIGKILL, power loss, preemption) leaves its trial RUNNING forever; it would
block the count of trained trials and TPE would keep "lying" about it. Three ways to notice:
  * same machine (hostname and boot id): the recorded pid is gone, or is another process now (its start
    time differs). Immediate, so a plain resume never waits for a grace period;
  * RDB storages: Optuna's heartbeat (storage.HEARTBEAT_INTERVAL / GRACE_PERIOD), for other machines;
  * journal files (no heartbeat in Optuna 5): a `heartbeat_at` user attr refreshed by the same thread.
A dead trial becomes FAIL with `failed_reason`, and its candidate (params, exact genome, preset name) is
enqueued again (at most MAX_RETRIES times) when it had reached training or was a preset.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, is_rdb

__all__ = ["MAX_RETRIES", "worker_identity", "process_alive", "Heartbeat", "requeue", "enqueue_again",
           "reap_dead_trials", "fail_trial"]

MAX_RETRIES = 2  # times one candidate is queued again after its worker died or was interrupted


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


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("host") == b.get("host") and a.get("boot", "") == b.get("boot", "")


class Heartbeat:
    """`with Heartbeat(study, trial_id):` beats every `interval` seconds in a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float = HEARTBEAT_INTERVAL):
        self.storage, self.trial_id, self.interval = study._storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def beat(self) -> None:
        try:
            if is_rdb(self.storage) and self.storage.get_heartbeat_interval():
                self.storage.record_heartbeat(self.trial_id)
            else:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat_at", time.time())
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


def requeue(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Enqueue the candidate of a trial that did not finish; returns the retry count, None if not queued.

    Also the heartbeat_stale_trial_callback of RDB storages (then `trial` is already FAIL).
    """
    attrs = trial.user_attrs
    if "genome" not in attrs or (attrs.get("phase") != "training" and "preset" not in attrs):
        return None  # not yet a candidate, or not yet trained: cheap, TPE will propose again
    retries = int(attrs.get("retries", 0))
    if retries >= MAX_RETRIES:
        return None
    enqueue_again(study, trial, {"retry_of": attrs.get("retry_of", trial.number), "retries": retries + 1})
    return retries + 1


def enqueue_again(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
    """Enqueue the same candidate (params, exact genome, preset name) with these retry attrs."""
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    # A --prescreen winner's retry keeps its round's verdict (it is trained without a new round).
    keep = {k: trial.user_attrs[k] for k in ("preset", "genome", "prescreen_proxy", "prescreen_k", "prescreen_rank",
                                             "prescreen_score", "prescreen_values") if k in trial.user_attrs}
    study.enqueue_trial(params, user_attrs={**keep, **attrs})


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str, retry: bool = True) -> bool:
    """Mark a RUNNING trial FAIL with its reason (and enqueue it again); False if another worker was first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "failed_reason", reason)
        done = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    if done is False:
        return False
    if retry:
        requeue(study, trial)
    return True


def reap_dead_trials(study: optuna.Study, current: int | None = None) -> list[int]:
    """Fail (and requeue) every RUNNING trial whose worker is dead; returns their numbers.

    `current` is the number of a trial this process is running right now; any other RUNNING trial of
    this very process is an orphan (left by an interrupted or crashed earlier step).
    """
    if is_rdb(study._storage) and study._storage.get_heartbeat_interval():
        optuna.storages.fail_stale_trials(study)  # other machines, by heartbeat; calls `requeue`
    me, now, reaped = worker_identity(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == current:
            continue
        worker = t.user_attrs.get("worker")
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if worker is None:  # killed between ask() and the first attr: only its age tells
            reason = "worker vanished before the trial started" if now - started > GRACE_PERIOD else None
        elif _same_machine(worker, me):
            own = worker.get("pid") == me["pid"] and worker.get("start") == me["start"]
            reason = None if not own and process_alive(worker) else f"worker pid {worker.get('pid')} died"
        elif not is_rdb(study._storage) or t.user_attrs.get("phase") != "training":
            # Optuna's heartbeat (RDB) starts with training; before that, and in journal files, our own attr.
            last = float(t.user_attrs.get("heartbeat_at", started))
            reason = f"no heartbeat for {now - last:.0f} s" if now - last > GRACE_PERIOD else None
        else:
            reason = None  # RDB: fail_stale_trials above judged it
        if reason and fail_trial(study, t, reason):
            reaped.append(t.number)
    return reaped
