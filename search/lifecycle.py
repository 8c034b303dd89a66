"""A trial's life in the search, and the one module that reads or writes its state.

Every candidate the sampler proposes is one Optuna trial. While RUNNING it is in a `Phase`; it ends as
one `Outcome`:
    completed  trained for all --trial-epochs (COMPLETE); value = final validation accuracy (in a
               multi-objective study: values = [accuracy, cost], see search.objectives)
    pruned     trained, stopped early by the pruner (PRUNED); value = last validation accuracy
    rejected   broke a rule, never trained (COMPLETE with placeholder value 0 and constraints > 0,
               so TPE learns the infeasible region; Optuna's best_trial ignores it)
    duplicate  the same genome as an earlier trained trial: its result is copied, not retrained
    screened   feasible, but another proposal of its --prescreen round scored higher on the proxy: never
               trained (FAIL; see search.prescreen for why FAIL)
    too large  ran out of device memory, and again when tried once more alone on its device (or at half the
               batch): COMPLETE with placeholder value 0 and the constraint "memory" = 1, so TPE learns the region
               this device cannot train, as it learns the rules' (search.memory)
    failed     training raised or diverged, its worker died or was interrupted, or no place was left (FAIL)
    running / waiting  in progress / enqueued
"Trained" = completed + pruned: what --trials N counts.

The state lives in the trial's user attrs under the keys below; no other module touches them
(tests/test_structure.py checks). Its worker signs it (`sign`) and keeps a `Heartbeat` while training; a
trial that did not finish (its worker died, or was interrupted) is failed and its candidate queued again
when it had reached training or was a preset (at most MAX_RETRIES times).

The exact count (`claim`): a process may train a candidate only if the study holds fewer than N trials
trained or holding a place. The workers of one node call it under one lock (search.workers.SlotLock), so
together they never train more than N. Workers on other nodes share no lock: `claim` waits (up to a few
seconds) for the verdict of earlier trials still being checked, which closes most but not all races; two
nodes may each take the last place at the same moment and train one trial more than N.
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Iterable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from space import Analysis

from .liveness import process_alive, same_machine, worker_identity
from .objectives import cost_name
from .settings import one_line
from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, is_rdb

__all__ = ["Phase", "Outcome", "MAX_RETRIES", "Counts", "classify", "count", "is_enqueued", "free_places", "claim",
           "state_columns", "rejected_reason", "stopped_by_interrupt", "tell_rejected", "tell_duplicate",
           "tell_trained", "tell_failed", "tell_not_trained", "tell_screened", "tell_too_large", "note_oom_retry", "mark", "abandon", "fail_trial", "requeue",
           "reap_dead_trials", "sign", "Heartbeat", "objective_values"]

MAX_RETRIES = 2  # times one candidate is queued again after its worker died or was interrupted

# The user-attr keys of a trial's state.
_PHASE, _TRAINED, _REJECTED, _DUPLICATE_OF = "phase", "trained", "rejected", "duplicate_of"
_LOST_TO, _FAILED, _RETRY_OF, _RETRIES = "prescreen_lost_to", "failed_reason", "retry_of", "retries"
_TOO_LARGE, _OOM_RETRY = "too_large", "oom_retry"  # out of memory twice: why; out of memory once: how it was retried
# What Optuna's own tools (optuna-dashboard, `optuna trials`) show of a candidate never trained: a rejected
# one is COMPLETE there (value 0, how TPE learns the infeasible region), so this attr tells it apart.
_STATUS = "status"
# Who runs a RUNNING trial (search.liveness.worker_identity), and when it last showed it was alive.
_WORKER, _HEARTBEAT_AT = "worker", "heartbeat_at"
INTERRUPTED = "interrupted"  # the failed_reason of a trial stopped by Ctrl-C / SIGTERM


class Phase(enum.StrEnum):
    """Where a RUNNING trial is. Without a phase it is being checked (it may still be rejected)."""

    SCREENING = "screening"  # one of a --prescreen round's later proposals
    RESERVED = "reserved"  # a round's first proposal, holding the place for the round's winner
    TRAINING = "training"


HOLDS_PLACE = (Phase.TRAINING, Phase.RESERVED)  # the phases counted against --trials


class Outcome(enum.StrEnum):
    """What became of a trial (classify), or of one Search.step."""

    COMPLETED = "completed"
    PRUNED = "pruned"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    SCREENED = "screened"
    TOO_LARGE = "too large"
    FAILED = "failed"
    RUNNING = "running"
    WAITING = "waiting"
    NO_PLACE = "no place"  # Search.step only: the others hold the remaining places (nothing, or a FAIL, told)


def classify(t: FrozenTrial) -> Outcome:
    if t.state == TrialState.WAITING:
        return Outcome.WAITING
    if t.state == TrialState.RUNNING:
        return Outcome.RUNNING
    a = t.user_attrs
    if _REJECTED in a:
        return Outcome.REJECTED
    if _DUPLICATE_OF in a:
        return Outcome.DUPLICATE
    if _LOST_TO in a:
        return Outcome.SCREENED
    if _TOO_LARGE in a:
        return Outcome.TOO_LARGE
    if t.state == TrialState.COMPLETE and a.get(_TRAINED):
        return Outcome.COMPLETED
    if t.state == TrialState.PRUNED and a.get(_TRAINED):
        return Outcome.PRUNED
    return Outcome.FAILED


@dataclass
class Counts:
    completed: int = 0
    pruned: int = 0
    rejected: int = 0
    duplicate: int = 0
    screened: int = 0  # proposals a --prescreen round did not choose
    failed: int = 0
    too_large: int = 0  # out of memory on the device twice (search.memory)
    running: int = 0  # holding a place right now (HOLDS_PLACE): other workers, or an unreaped dead one
    waiting: int = 0
    epochs: int = 0  # epochs trained over all trained trials

    @property
    def trained(self) -> int:
        return self.completed + self.pruned

    def as_dict(self) -> dict[str, int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "trained": self.trained}

    def line(self) -> str:
        return (f"{self.trained} trained ({self.completed} completed, {self.pruned} pruned), {self.rejected} rejected, "
                f"{self.duplicate} duplicate, " + (f"{self.screened} screened out, " if self.screened else "")
                + f"{self.failed} failed"
                + (f", {self.too_large} too large for this device" if self.too_large else ""))


def count(trials: Iterable[FrozenTrial]) -> Counts:
    c = Counts()
    for t in trials:
        k = classify(t)
        if k == Outcome.RUNNING and t.user_attrs.get(_PHASE) not in HOLDS_PLACE:
            continue  # asked, not (yet) holding a place: it may still be rejected or screened out
        setattr(c, k.replace(" ", "_"), getattr(c, k.replace(" ", "_")) + 1)
        if k in (Outcome.COMPLETED, Outcome.PRUNED):
            c.epochs += int(t.user_attrs.get("epochs", 0))
    return c


def is_enqueued(t: FrozenTrial) -> bool:
    """A preset or a retry: chosen by us, not by the sampler."""
    return "preset" in t.user_attrs or _RETRY_OF in t.user_attrs


def rejected_reason(t: FrozenTrial) -> str | None:
    """Which rule a rejected trial broke (None for any other trial)."""
    return t.user_attrs.get(_REJECTED)


def state_columns(t: FrozenTrial) -> dict[str, Any]:
    """The leaderboard's columns of a trial's state."""
    a = t.user_attrs
    return {"rejected_reason": a.get(_REJECTED) or a.get(_TOO_LARGE),
            "failed_reason": a.get(_FAILED) if classify(t) == Outcome.FAILED else None,
            "duplicate_of": a.get(_DUPLICATE_OF), "retry_of": a.get(_RETRY_OF), "lost_to": a.get(_LOST_TO)}


def stopped_by_interrupt(trials: Iterable[FrozenTrial], since: float) -> list[int]:
    """The trials a Ctrl-C / SIGTERM failed after `since` (a time.time())."""
    return [t.number for t in trials if t.user_attrs.get(_FAILED) == INTERRUPTED and t.datetime_complete
            and t.datetime_complete.timestamp() >= since]


def free_places(study: optuna.Study, n_trials: int) -> bool:
    c = count(study.get_trials(deepcopy=False))
    return c.trained + c.running < n_trials


def claim(study: optuna.Study, trial: optuna.Trial, n_trials: int, phase: Phase, wait_seconds: float) -> bool:
    """Whether `trial` may take one of the n_trials places; if so it is now in `phase` and holds it.

    The one decision behind the exact count (module docstring). An earlier trial (lower number) of another
    worker that is still being checked may take a place first, so its verdict is awaited, for at most
    `wait_seconds` (its worker may have died before giving one); a later trial waits for ours.
    """
    end = time.monotonic() + wait_seconds
    while True:
        trials = study.get_trials(deepcopy=False)
        c = count(trials)  # c.running: trials holding a place (not this one: it holds none yet)
        if c.trained + c.running >= n_trials:
            return False
        # Not waited for: trials holding a place (counted) and a round's later proposals (its place is held).
        checking = sum(t.state == TrialState.RUNNING and t.number < trial.number
                       and t.user_attrs.get(_PHASE) not in (*HOLDS_PLACE, Phase.SCREENING) for t in trials)
        if c.trained + c.running + checking < n_trials or time.monotonic() > end:
            trial.set_user_attr(_PHASE, str(phase))
            return True
        time.sleep(0.05)  # an earlier trial's check takes a few storage round trips


def sign(trial: optuna.Trial) -> None:
    """Record this process as the trial's worker: reap_dead_trials judges it by this identity."""
    trial.set_user_attr(_WORKER, worker_identity())


class Heartbeat:
    """`with Heartbeat(study, trial_id):` beats every `interval` seconds in a daemon thread, so that other
    machines can tell the trial's worker is alive (reap_dead_trials). RDB storages: Optuna's own heartbeat;
    journal files (none in Optuna 5): the trial's heartbeat_at attr."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float = HEARTBEAT_INTERVAL):
        self.storage, self.trial_id, self.interval = study._storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{trial_id}")

    def beat(self) -> None:
        try:
            if is_rdb(self.storage) and self.storage.get_heartbeat_interval():
                self.storage.record_heartbeat(self.trial_id)
            else:
                self.storage.set_trial_user_attr(self.trial_id, _HEARTBEAT_AT, time.time())
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


def objective_values(accuracy: float, a: Analysis, objectives: str) -> list[float]:
    """The values to tell Optuna: [accuracy], or [accuracy, cost] in a multi-objective study (the cost is
    analytic: a's params or macs; see search.objectives)."""
    cost = cost_name(objectives)
    return [float(accuracy)] + ([float(getattr(a, cost))] if cost else [])


def mark(trial: optuna.Trial, phase: Phase) -> None:
    """Move a RUNNING trial to `phase` (a round's proposal to screening, its winner to training)."""
    trial.set_user_attr(_PHASE, str(phase))


def tell_rejected(study: optuna.Study, trial: optuna.Trial, reason: str, values: list[float]) -> None:
    trial.set_user_attr(_REJECTED, reason)
    trial.set_user_attr(_STATUS, str(Outcome.REJECTED))
    study.tell(trial, values)


def tell_too_large(study: optuna.Study, trial: optuna.Trial, reason: str, values: list[float]) -> None:
    """Out of memory twice: never trained to the end; infeasible for TPE by the constraint "memory" = 1."""
    trial.set_constraint("memory", 1.0)
    trial.set_user_attr(_TOO_LARGE, reason)
    trial.set_user_attr(_STATUS, str(Outcome.TOO_LARGE))
    study.tell(trial, values)


def note_oom_retry(trial: optuna.Trial, how: str) -> None:
    """Record that the trial's training ran out of memory once and how it was retried (it then finished)."""
    trial.set_user_attr(_OOM_RETRY, how)


def tell_duplicate(study: optuna.Study, trial: optuna.Trial, genome_json: str) -> FrozenTrial | None:
    """Copy the result of an earlier trial of the same genome (returned) instead of training it again; None
    (nothing told) if there is none, trained or in training."""
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or t.user_attrs.get("genome") != genome_json:
            continue
        k = classify(t)
        if k not in (Outcome.COMPLETED, Outcome.PRUNED) and not (
                k == Outcome.RUNNING and t.user_attrs.get(_PHASE) == Phase.TRAINING):
            continue
        trial.set_user_attr(_DUPLICATE_OF, t.number)
        trial.set_user_attr(_STATUS, str(Outcome.DUPLICATE))  # told its original's state and value; never trained
        if k == Outcome.RUNNING:
            study.tell(trial, state=TrialState.FAIL)  # another worker is training it right now
        elif k == Outcome.COMPLETED:
            study.tell(trial, t.values)
        else:
            for step, value in sorted(t.intermediate_values.items()):
                trial.report(value, step)
            study.tell(trial, state=TrialState.PRUNED)
        return t
    return None


def tell_trained(study: optuna.Study, trial: optuna.Trial, values: list[float] | None) -> Outcome:
    """A finished training run: COMPLETE with `values`, or PRUNED when None."""
    trial.set_user_attr(_TRAINED, True)
    if values is None:
        study.tell(trial, state=TrialState.PRUNED)
        return Outcome.PRUNED
    study.tell(trial, values)
    return Outcome.COMPLETED


def tell_failed(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(_FAILED, reason)
    study.tell(trial, state=TrialState.FAIL)


def tell_not_trained(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """FAIL a trial that will not be trained; a preset or a retry is queued again, as it was, for later."""
    tell_failed(study, trial, reason)
    frozen = study._storage.get_trial(trial._trial_id)
    if is_enqueued(frozen):
        _enqueue_again(study, frozen, {k: frozen.user_attrs[k] for k in (_RETRY_OF, _RETRIES)
                                       if k in frozen.user_attrs})


def tell_screened(study: optuna.Study, trial: optuna.Trial, winner: int) -> None:
    trial.set_user_attr(_LOST_TO, winner)
    trial.set_user_attr(_STATUS, str(Outcome.SCREENED))
    study.tell(trial, state=TrialState.FAIL)  # why FAIL and not PRUNED: search.prescreen


def requeue(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Enqueue the candidate of a trial that did not finish; returns the retry count, None if not queued.

    Also the heartbeat_stale_trial_callback of RDB storages (then `trial` is already FAIL).
    """
    attrs = trial.user_attrs
    if "genome" not in attrs or (attrs.get(_PHASE) != Phase.TRAINING and "preset" not in attrs):
        return None  # not yet a candidate, or not yet trained: cheap, TPE will propose again
    retries = int(attrs.get(_RETRIES, 0))
    if retries >= MAX_RETRIES:
        return None
    _enqueue_again(study, trial, {_RETRY_OF: attrs.get(_RETRY_OF, trial.number), _RETRIES: retries + 1})
    return retries + 1


def _enqueue_again(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
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
        storage.set_trial_user_attr(trial._trial_id, _FAILED, reason)
        done = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    if done is False:
        return False
    if retry:
        requeue(study, trial)
    return True


def abandon(study: optuna.Study, asked: list[optuna.Trial], e: BaseException) -> int | None:
    """Fail every trial of `asked` still RUNNING (queued again if it was training or a preset), because of `e`;
    returns the one to name: the one in training, else the first one still open."""
    why = INTERRUPTED if isinstance(e, KeyboardInterrupt) else one_line(e)
    stopped = None
    for t in asked:
        try:
            frozen = study._storage.get_trial(t._trial_id)
            if frozen.state == TrialState.RUNNING:
                fail_trial(study, frozen, why, retry=True)
                if stopped is None or frozen.user_attrs.get(_PHASE) == Phase.TRAINING:
                    stopped = t.number
        except Exception:  # the storage itself is gone: the next run reaps the trial; report the cause
            pass
    return stopped


def _death(t: FrozenTrial, me: dict[str, Any], now: float, rdb: bool) -> str | None:
    """Why a RUNNING trial's worker is dead, None if it may be alive."""
    worker = t.user_attrs.get(_WORKER)
    started = t.datetime_start.timestamp() if t.datetime_start else now
    if worker is None:  # killed between ask() and the first attr: only its age tells
        return "worker vanished before the trial started" if now - started > GRACE_PERIOD else None
    if same_machine(worker, me):
        own = worker.get("pid") == me["pid"] and worker.get("start") == me["start"]
        return None if not own and process_alive(worker) else f"worker pid {worker.get('pid')} died"
    if not rdb or t.user_attrs.get(_PHASE) != Phase.TRAINING:
        # Optuna's heartbeat (RDB) starts with training; before that, and in journal files, our own attr.
        last = float(t.user_attrs.get(_HEARTBEAT_AT, started))
        return f"no heartbeat for {now - last:.0f} s" if now - last > GRACE_PERIOD else None
    return None  # RDB: fail_stale_trials judged it


def reap_dead_trials(study: optuna.Study, current: int | None = None) -> list[int]:
    """Fail (and requeue) every RUNNING trial whose worker is dead; returns their numbers.

    `current` is the number of a trial this process is running right now; any other RUNNING trial of
    this very process is an orphan (left by an interrupted or crashed earlier step).
    """
    rdb = is_rdb(study._storage) and bool(study._storage.get_heartbeat_interval())
    if rdb:
        optuna.storages.fail_stale_trials(study)  # other machines, by heartbeat; calls `requeue`
    me, now, reaped = worker_identity(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == current:
            continue
        reason = _death(t, me, now, is_rdb(study._storage))
        if reason and fail_trial(study, t, reason):
            reaped.append(t.number)
    return reaped
