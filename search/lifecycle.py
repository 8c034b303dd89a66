"""A trial's life in the search, and the one module that reads or writes its state.

Every candidate the sampler proposes is one Optuna trial. While RUNNING it is in a `Phase`; it ends as
one `Outcome`:
    completed  trained for all --trial-epochs (COMPLETE); value = final validation accuracy (in a
               multi-objective study: values = [accuracy, cost], see search.settings.OBJECTIVES)
    pruned     trained, stopped early by the pruner (PRUNED); value = last validation accuracy
    rejected   broke a rule, never trained: PRUNED with no value and constraints > 0. TPE sorts a trial with
               constraints > 0 into its infeasible group whatever its state, so it learns where the rules lie,
               while optuna-dashboard's and Optuna's plots of values show no 0.0 point for a net never trained
               (studies before 2026-12-07 told it COMPLETE(0): still classified and learned from the same)
    duplicate  the same genome as an earlier trained trial: its result is copied, not retrained
    screened   feasible, but another proposal of its --prescreen round scored higher on the proxy: never
               trained (FAIL; see search.prescreen for why FAIL)
    too large  ran out of device memory, and again when tried once more alone on its device (or at half the
               batch): PRUNED with no value and the constraint "memory" = 1, so TPE learns the region this
               device cannot train, as it learns the rules' (search.memory)
    failed     training raised or diverged, its worker died or was interrupted, or no place was left (FAIL)
    running / waiting  in progress / enqueued
"Trained" = completed + pruned: what --trials N counts.

The state lives in the trial's stored record (search.record.TrialRecord: its state fields), written and
read only through it (tests/test_structure.py checks). Its worker signs it (`sign`) and keeps a `Heartbeat` while training; a
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
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from space import Analysis

from .liveness import Clock, Heartbeat, death, worker_identity
from .record import TrialRecord, carried, enqueue, write, write_stored
from .settings import cost_name, one_line
from .storage import is_rdb

__all__ = ["Phase", "Outcome", "MAX_RETRIES", "Counts", "classify", "count", "is_enqueued", "free_places", "claim",
           "state_columns", "rejected_reason", "stopped_by_interrupt", "Verdict", "rejected", "duplicate_of",
           "trained", "failed", "not_trained", "screened", "too_large", "tell", "mark", "abandon", "fail_trial",
           "requeue", "reap_dead_trials", "sign", "heartbeat", "objective_values"]

MAX_RETRIES = 2  # times one candidate is queued again after its worker died or was interrupted

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
    r = TrialRecord.of(t)
    if r.rejected is not None:
        return Outcome.REJECTED
    if r.duplicate_of is not None:
        return Outcome.DUPLICATE
    if r.prescreen_lost_to is not None:
        return Outcome.SCREENED
    if r.too_large is not None:
        return Outcome.TOO_LARGE
    if t.state == TrialState.COMPLETE and r.trained:
        return Outcome.COMPLETED
    if t.state == TrialState.PRUNED and r.trained:
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
        r = TrialRecord.of(t)
        if k == Outcome.RUNNING and r.phase not in HOLDS_PLACE:
            continue  # asked, not (yet) holding a place: it may still be rejected or screened out
        setattr(c, k.replace(" ", "_"), getattr(c, k.replace(" ", "_")) + 1)
        if k in (Outcome.COMPLETED, Outcome.PRUNED):
            c.epochs += int(r.epochs or 0)
    return c


def is_enqueued(t: FrozenTrial) -> bool:
    """A preset or a retry: chosen by us, not by the sampler."""
    r = TrialRecord.of(t)
    return r.preset is not None or r.retry_of is not None


def rejected_reason(t: FrozenTrial) -> str | None:
    """Which rule a rejected trial broke (None for any other trial)."""
    return TrialRecord.of(t).rejected


def state_columns(t: FrozenTrial) -> dict[str, Any]:
    """The leaderboard's columns of a trial's state."""
    r = TrialRecord.of(t)
    return {"rejected_reason": r.rejected or r.too_large,
            "failed_reason": r.failed_reason if classify(t) == Outcome.FAILED else None,
            "duplicate_of": r.duplicate_of, "retry_of": r.retry_of, "lost_to": r.prescreen_lost_to}


def stopped_by_interrupt(trials: Iterable[FrozenTrial], since: float) -> list[int]:
    """The trials a Ctrl-C / SIGTERM failed after `since` (a time.time())."""
    return [t.number for t in trials if TrialRecord.of(t).failed_reason == INTERRUPTED and t.datetime_complete
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
                       and TrialRecord.of(t).phase not in (*HOLDS_PLACE, Phase.SCREENING) for t in trials)
        if c.trained + c.running + checking < n_trials or time.monotonic() > end:
            write(trial, phase=str(phase))
            return True
        time.sleep(0.05)  # an earlier trial's check takes a few storage round trips


def sign(trial: optuna.Trial) -> None:
    """Record this process as the trial's worker: reap_dead_trials judges it by this identity."""
    write(trial, worker=worker_identity())


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Heartbeat:
    """`with heartbeat(study, trial):` shows other machines the trial's worker is alive while it trains
    (search.liveness.Heartbeat; journal files: the trial's heartbeat_at attr)."""
    storage, trial_id = study._storage, trial._trial_id
    return Heartbeat(storage, trial_id, lambda now: write_stored(storage, trial_id, heartbeat_at=now))


def objective_values(accuracy: float, a: Analysis, objectives: str, latency_ms: float | None = None) -> list[float]:
    """The values to tell Optuna: [accuracy], or [accuracy, cost] in a multi-objective study (the cost is
    analytic: a's params or macs, or the predicted `latency_ms`; see search.settings.cost_name)."""
    cost = cost_name(objectives)
    if cost == "latency":
        return [float(accuracy), float(latency_ms)]
    return [float(accuracy)] + ([float(getattr(a, cost))] if cost else [])


def mark(trial: optuna.Trial, phase: Phase) -> None:
    """Move a RUNNING trial to `phase` (a round's proposal to screening, its winner to training)."""
    write(trial, phase=str(phase))


@dataclass(frozen=True)
class Verdict:
    """What becomes of a trial, as a value: its Outcome and what `tell` records with it. Made by the
    functions below (rejected, duplicate_of, trained, failed, not_trained, too_large, screened), told by
    `tell`."""

    outcome: Outcome
    state: TrialState = TrialState.COMPLETE
    values: list[float] | None = None  # COMPLETE only
    attrs: dict[str, Any] = field(default_factory=dict)  # the TrialRecord fields to store first
    constraints: dict[str, float] = field(default_factory=dict)  # constraints to set first (> 0: infeasible)
    reports: tuple[tuple[int, float], ...] = ()  # intermediate values to report first (a pruned original's)
    requeue: bool = False  # a preset or a retry is queued again, as it was, once told
    note: str = ""  # the log line's text after the outcome


def rejected(reason: str) -> Verdict:
    """Broke a rule (its constraints > 0 are set): PRUNED with no value, never trained (module docstring)."""
    return Verdict(Outcome.REJECTED, TrialState.PRUNED, attrs=dict(rejected=reason, status=str(Outcome.REJECTED)),
                   note=reason)


def duplicate_of(study: optuna.Study, trial: optuna.Trial, genome_json: str) -> Verdict | None:
    """The verdict copying the result of an earlier trial of the same genome instead of training it again;
    None if there is none, trained or in training."""
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.of(t)
        if t.number == trial.number or r.genome != genome_json:
            continue
        k = classify(t)
        if k not in (Outcome.COMPLETED, Outcome.PRUNED) and not (
                k == Outcome.RUNNING and r.phase == Phase.TRAINING):
            continue
        # Told its original's state and value; never trained. FAIL while another worker is training it.
        attrs = dict(duplicate_of=t.number, status=str(Outcome.DUPLICATE))
        note = f"of trial {t.number} ({k}): not trained again"
        if k == Outcome.COMPLETED:
            return Verdict(Outcome.DUPLICATE, values=list(t.values), attrs=attrs, note=note)
        if k == Outcome.PRUNED:
            return Verdict(Outcome.DUPLICATE, TrialState.PRUNED, attrs=attrs, note=note,
                           reports=tuple(sorted(t.intermediate_values.items())))
        return Verdict(Outcome.DUPLICATE, TrialState.FAIL, attrs=attrs, note=note)
    return None


def trained(values: list[float] | None, oom_retry: str | None = None) -> Verdict:
    """A finished training run: COMPLETE with `values`, or PRUNED when None; `oom_retry`: how it was retried
    after one out-of-memory (search.memory), recorded with it."""
    attrs = dict(trained=True, **(dict(oom_retry=oom_retry) if oom_retry else {}))
    if values is None:
        return Verdict(Outcome.PRUNED, TrialState.PRUNED, attrs=attrs)
    return Verdict(Outcome.COMPLETED, values=values, attrs=attrs)


def failed(reason: str) -> Verdict:
    """Training raised or diverged."""
    return Verdict(Outcome.FAILED, TrialState.FAIL, attrs=dict(failed_reason=reason), note=reason)


def not_trained(reason: str) -> Verdict:
    """FAIL a trial that will not be trained (no place left); a preset or a retry is queued again."""
    return Verdict(Outcome.NO_PLACE, TrialState.FAIL, attrs=dict(failed_reason=reason), requeue=True, note=reason)


def too_large(reason: str) -> Verdict:
    """Out of memory twice (search.memory): never trained to the end; PRUNED with no value and the constraint
    "memory" = 1, so TPE learns the region this device cannot train, as it learns the rules'."""
    return Verdict(Outcome.TOO_LARGE, TrialState.PRUNED, attrs=dict(too_large=reason, status=str(Outcome.TOO_LARGE)),
                   constraints={"memory": 1.0}, note=reason)


def screened(winner: int) -> Verdict:
    """A --prescreen round's proposal that lost to `winner` (FAIL, not PRUNED: search.prescreen says why)."""
    return Verdict(Outcome.SCREENED, TrialState.FAIL, attrs=dict(prescreen_lost_to=winner,
                                                                     status=str(Outcome.SCREENED)))


def tell(study: optuna.Study, trial: optuna.Trial, verdict: Verdict) -> Outcome:
    """The one place a trial of this process is told: record the verdict's attrs (and reports), tell Optuna
    its state and values, and queue a preset or retry again if the verdict says so."""
    write(trial, **verdict.attrs)
    for key, value in verdict.constraints.items():
        trial.set_constraint(key, value)
    for step, value in verdict.reports:
        trial.report(value, step)
    study.tell(trial, verdict.values if verdict.state == TrialState.COMPLETE else None, state=verdict.state)
    if verdict.requeue:
        frozen = study._storage.get_trial(trial._trial_id)
        if is_enqueued(frozen):
            r = TrialRecord.of(frozen)
            _enqueue_again(study, frozen, {k: v for k, v in dict(retry_of=r.retry_of, retries=r.retries).items()
                                           if v is not None})
    return verdict.outcome


def requeue(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Enqueue the candidate of a trial that did not finish; returns the retry count, None if not queued.

    Also the heartbeat_stale_trial_callback of RDB storages (then `trial` is already FAIL).
    """
    r = TrialRecord.of(trial)
    if r.genome is None or (r.phase != Phase.TRAINING and r.preset is None):
        return None  # not yet a candidate, or not yet trained: cheap, TPE will propose again
    retries = int(r.retries or 0)
    if retries >= MAX_RETRIES:
        return None
    _enqueue_again(study, trial, dict(retry_of=r.retry_of if r.retry_of is not None else trial.number,
                                      retries=retries + 1))
    return retries + 1


def _enqueue_again(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
    """Enqueue the same candidate (params, exact genome, preset name) with these retry attrs."""
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    # A --prescreen winner's retry keeps its round's verdict (it is trained without a new round).
    enqueue(study, params, **{**carried(trial), **attrs})


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with its reason and enqueue it again; False if another worker was first.

    Not `tell`: the trial may be another process's (a dead worker's), so this is the storage's own
    compare-and-set on RUNNING, which lets exactly one of several reaping workers requeue it.
    """
    storage = study._storage
    try:
        write_stored(storage, trial._trial_id, failed_reason=reason)
        done = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    if done is False:
        return False
    requeue(study, trial)
    return True


def abandon(study: optuna.Study, trial_ids: Iterable[int], e: BaseException) -> int | None:
    """Fail every trial of `trial_ids` still RUNNING (queued again if it was training or a preset), because of
    `e`; returns the number of the one to name: the one in training, else the first one still open."""
    why = INTERRUPTED if isinstance(e, KeyboardInterrupt) else one_line(e)
    stopped = None
    for trial_id in trial_ids:
        try:
            frozen = study._storage.get_trial(trial_id)
            if frozen.state == TrialState.RUNNING:
                fail_trial(study, frozen, why)
                if stopped is None or TrialRecord.of(frozen).phase == Phase.TRAINING:
                    stopped = frozen.number
        except Exception:  # the storage itself is gone: the next run reaps the trial; report the cause
            pass
    return stopped


def reap_dead_trials(study: optuna.Study) -> list[int]:
    """Fail (and requeue) every RUNNING trial whose worker is dead (search.liveness.death); returns their
    numbers. This process's own RUNNING trials count as dead: they are orphans of an interrupted or crashed
    earlier step (Search.step reaps between steps, never during one)."""
    rdb = is_rdb(study._storage) and bool(study._storage.get_heartbeat_interval())
    if rdb:
        optuna.storages.fail_stale_trials(study)  # other machines, by heartbeat; calls `requeue`
    me, now, reaped = worker_identity(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        r = TrialRecord.of(t)
        beat = r.heartbeat_at if r.heartbeat_at is not None else started
        reason = death(r.worker, me, Clock(started, float(beat), now), training=r.phase == Phase.TRAINING,
                       rdb=is_rdb(study._storage))
        if reason and fail_trial(study, t, reason):
            reaped.append(t.number)
    return reaped
