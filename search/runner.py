"""The search loop, with ask/tell so that rejection, deduplication and counting are explicit.

    ask -> genome (space.suggest_genome, or the exact genome an enqueued trial carries)
        -> broken rule?  constraints > 0, tell COMPLETE(0) as "rejected": never trained, not counted
        -> trained before? copy its result as "duplicate": not retrained, not counted
        -> --prescreen K (search.prescreen): ask until K feasible proposals, score them by a zero-cost proxy,
           keep the best, tell the other K - 1 FAIL as "screened" (never trained, not counted)
        -> other workers hold the last of the N places? FAIL "not trained" (a preset or retry is queued again)
        -> train briefly, reporting validation accuracy per epoch to the pruner
        -> tell COMPLETE(val acc) / PRUNED / FAIL(reason)
In a multi-objective study (search.objectives) every value told is [accuracy, cost]: a rejected candidate
is COMPLETE(0, its analytic cost), and nothing is reported per epoch (Optuna cannot prune such studies).
until the study holds N trained (completed or pruned) trials, counting those of earlier runs and of
other workers; the decision to train is taken under a lock the workers of a node share, so that they
never train more than N together. The training itself is injected (`train_fn`), so tests can drive the loop without torch.
"""
from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import optuna
from optuna.trial import TrialState

from space import Analysis, Genome, analyze, check, construct

from .constraints import constraint_values
from .liveness import Heartbeat, enqueue_again, fail_trial, reap_dead_trials, worker_identity
from .objectives import objective_values
from .prescreen import Prescreen, best_first, scores_of
from .settings import SearchSettings
from .trials import HOLDS_PLACE, Counts, count, is_enqueued, kind

__all__ = ["REJECTED_VALUE", "SearchStopped", "TrainFn", "Search", "make_train_fn"]

REJECTED_VALUE = 0.0  # placeholder accuracy of a rejected trial; TPE ranks it by its constraints instead


@dataclass(frozen=True)
class _Candidate:
    """A feasible, new genome reserved for training."""

    genome: Genome
    analysis: Analysis  # its exact params, MACs, RF, peak activations
    tag: str  # "  [preset]" or ""


class SearchStopped(RuntimeError):
    """The loop gave up (too many failures or rejections in a row); the message is one line."""


class TrainFn(Protocol):
    """Train `genome`, calling on_epoch(stats) after every epoch (True: stop); returns a TrainResult."""

    def __call__(self, genome: Genome, on_epoch: Callable[[object], bool]): ...


def make_train_fn(data, settings: SearchSettings, device: str = "auto") -> TrainFn:
    """The real thing: train.engine.train for settings.trial_epochs, validating after every epoch."""
    import torch
    from train.engine import train

    config = settings.train_config(settings.trial_epochs, device, eval_every=1, checkpoint=None)

    def train_fn(genome: Genome, on_epoch: Callable[[object], bool]):
        try:
            return train(genome, config, data, on_epoch=on_epoch)
        except torch.OutOfMemoryError as e:
            # The traceback's frames hold the trial's model, activations and gradients: drop it, leave the
            # except block (which releases them), and only then hand the cached memory back, so that the
            # next candidate starts with a clean slate.
            error = e.with_traceback(None)
        release_memory()
        raise error

    return train_fn


def release_memory() -> None:
    """Free what unreferenced tensors still hold: Python's cycles first, then CUDA's cached blocks."""
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _json_float(value: float) -> float | None:
    """A user attr value: None for NaN and infinities (not JSON)."""
    return float(value) if math.isfinite(value) else None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class Search:
    study: optuna.Study
    settings: SearchSettings
    num_classes: int
    train_fn: TrainFn
    n_trials: int  # trained (completed + pruned) trials the study should hold in the end
    log: Callable[[str], None] = print
    max_failures_in_row: int = 5  # training failures in a row before giving up
    max_skips_in_row: int = 2000  # rejected or duplicate candidates in a row before giving up
    poll_seconds: float = 2.0  # wait between checks while other workers finish the last trials
    # Held while deciding to train a candidate; shared by all workers of a study (search.workers.SlotLock).
    lock: AbstractContextManager = field(default_factory=nullcontext)
    claim_wait_seconds: float = 30.0  # longest wait for an earlier trial's verdict before claiming a place
    prescreen: Prescreen | None = None  # train the best of K feasible proposals by a proxy (None: every one)
    interrupted: int | None = field(default=None, init=False)  # the trial a Ctrl-C / SIGTERM stopped

    def counts(self) -> Counts:
        return count(self.study.get_trials(deepcopy=False))

    def run(self) -> Counts:
        failures = skips = 0
        while True:
            for n in reap_dead_trials(self.study):
                self.log(f"trial {n:>4}  failed    its worker died or went silent (a trained candidate is queued "
                         "again)")
            c = self.counts()
            if c.trained >= self.n_trials:
                return c
            if c.trained + c.running >= self.n_trials:  # the rest is being trained by other workers
                time.sleep(self.poll_seconds)
                continue
            outcome, detail = self.step()
            if outcome == "full":  # another worker took the last slot meanwhile
                time.sleep(self.poll_seconds)
                continue
            # Failures in a row among the candidates that reached training (rejections in between do not
            # reset the count); skips in a row among all candidates.
            if outcome in ("completed", "pruned"):
                failures = 0
            elif outcome == "failed":
                failures += 1
            skips = skips + 1 if outcome in ("rejected", "duplicate") else 0
            if failures >= self.max_failures_in_row:
                raise SearchStopped(f"{failures} candidates in a row failed in training (last: {detail}); "
                                    "fix the cause, then run the same command to resume")
            self._check_skips(skips)

    def step(self) -> tuple[str, str]:
        """One trained candidate, start to end: (kind, detail); ("full", "") if no training slot was free.

        Deciding to train happens under `lock`: count the trained and training trials, ask, check the
        candidate, mark it training. Workers holding the same lock can therefore never start more training
        runs than --trials leaves (check-then-act without it: two workers each see one free slot). With a
        prescreen the first feasible proposal reserves the place; the lock is let go while the round's other
        proposals are asked and scored (seconds), and taken again to hand the place to the winner.
        """
        asked: list[optuna.Trial] = []  # this step's trials: none may be left RUNNING if it stops half-way
        try:
            with self.lock:
                c = self.counts()
                if c.trained + c.running >= self.n_trials:
                    return "full", ""
                trial = self.study.ask()
                asked.append(trial)
                proposed = self._propose(trial)
                if isinstance(proposed, tuple):
                    return proposed
                screen = self.prescreen is not None and self.prescreen.k > 1 and not is_enqueued(trial)
                # A round's first proposal holds the place for the round's winner ("reserved": counted as
                # running, never queued again), so that workers never screen for places already taken.
                prepared = self._claim(trial, proposed, "reserved" if screen else "training")
            if screen and not isinstance(prepared, tuple):
                trial, prepared = self._screen(trial, proposed, asked)
            if isinstance(prepared, tuple):
                return prepared
            return self._train(trial, prepared)
        except BaseException as e:  # Ctrl-C, SIGTERM, a storage error: leave nothing RUNNING behind
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else _first_line(e)
            stopped = None  # the trial to name: the one in training, else the first one still open
            for t in asked:
                try:
                    frozen = self.study._storage.get_trial(t._trial_id)
                    if frozen.state == TrialState.RUNNING:
                        # Queued again if it was training or a preset (liveness.requeue), not if it was screened.
                        fail_trial(self.study, frozen, why, retry=True)
                        if stopped is None or frozen.user_attrs.get("phase") == "training":
                            stopped = t.number
                except Exception:  # the storage itself is gone: the next run reaps the trial; report the cause
                    pass
            if isinstance(e, KeyboardInterrupt) and stopped is not None:
                self.interrupted = stopped
            raise

    def _check_skips(self, skips: int) -> None:
        """Give up after max_skips_in_row rejected or duplicate candidates in a row (in rounds or not)."""
        if skips >= self.max_skips_in_row:
            raise SearchStopped(f"{skips} candidates in a row were rejected or duplicates; the constraints "
                                "leave too little room: relax --max-params / --min-rf")

    def _propose(self, trial: optuna.Trial) -> tuple[str, str] | _Candidate:
        """Record the candidate; reject or deduplicate it (an outcome), or return it as feasible and new."""
        s, n = self.settings, trial.number
        trial.set_user_attr("worker", worker_identity())
        built = construct(trial, s.rules, num_classes=self.num_classes, version=s.construction)
        carried = trial.user_attrs.get("genome")  # presets and retries carry their exact genome
        genome = Genome.from_json(carried) if carried else built.genome
        a = analyze(genome)
        for key, value in constraint_values(genome, s.rules).items():
            trial.set_constraint(key, value)
        for key, value in {"genome": genome.to_json(), "summary": genome.summary(), "n_params": a.params,
                           "macs": a.macs, "rf": a.rf, "peak_act": a.peak_activations}.items():
            trial.set_user_attr(key, value)
        tag = f"  [{trial.user_attrs['preset']}]" if "preset" in trial.user_attrs else ""
        violations = check(genome, s.rules)
        if violations:
            reason = "; ".join(violations + ([built.note] if built.note and not carried else []))
            trial.set_user_attr("rejected", reason)
            # Optuna's tools count it "Complete" (value 0: how TPE learns the infeasible region); this user attr is
            # what optuna-dashboard and `optuna trials` show and filter on to tell it apart.
            trial.set_user_attr("status", "rejected")
            self.study.tell(trial, objective_values(REJECTED_VALUE, a, s.objectives))
            self.log(f"trial {n:>4}  rejected  {reason}{tag}")
            return "rejected", reason
        dup = self._duplicate_of(trial, genome.to_json())
        if dup is not None:
            return dup
        return _Candidate(genome, a, tag)

    def _claim(self, trial: optuna.Trial, cand: _Candidate, phase: str = "training") -> tuple[str, str] | _Candidate:
        """Take a training place for the candidate (phase "training", or "reserved" for a prescreen round), or
        tell it "not trained" if the others hold them all."""
        if self._budget_taken(trial.number):
            reason = f"not trained: the study already has {self.n_trials} trials trained or in training"
            self._not_trained(trial, reason)
            self.log(f"trial {trial.number:>4}  skipped   {reason} (another worker claimed the last one){cand.tag}")
            return "surplus", reason
        trial.set_user_attr("phase", phase)  # from now on it holds a slot (trials.count: running)
        return cand

    def _not_trained(self, trial: optuna.Trial, reason: str) -> None:
        """FAIL a trial that will not be trained; a preset or a retry is queued again, as it was, for later."""
        trial.set_user_attr("failed_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        frozen = self.study._storage.get_trial(trial._trial_id)
        if is_enqueued(frozen):
            enqueue_again(self.study, frozen, {k: frozen.user_attrs[k] for k in ("retry_of", "retries")
                                               if k in frozen.user_attrs})

    def _screen(self, first: optuna.Trial, cand: _Candidate, asked: list[optuna.Trial]
                ) -> tuple[optuna.Trial, tuple[str, str] | _Candidate]:
        """The prescreen round that `first` (holding a reserved place) opens: up to K feasible proposals,
        scored. Returns the winner and its candidate, now in training, or the winner and its outcome if another
        worker started training the same genome meanwhile. See search.prescreen."""
        p = self.prescreen
        round_ = [(first, cand)]
        skips = 0
        while len(round_) < p.k:
            trial = self.study.ask()
            asked.append(trial)
            if is_enqueued(trial):  # another worker queued a retry meanwhile: it is trained on its own, later
                self._not_trained(trial, "not trained: it came up during another trial's prescreen; queued again")
                break
            proposed = self._propose(trial)
            if isinstance(proposed, tuple):  # rejected or a duplicate, recorded as without a prescreen
                skips += 1
                self._check_skips(skips)
                continue
            skips = 0
            trial.set_user_attr("phase", "screening")
            round_.append((trial, proposed))
        values = p.score([c.genome for _, c in round_])
        scores = scores_of(values, p.proxy)
        order = best_first(scores)
        for rank, i in enumerate(order, 1):
            trial = round_[i][0]
            for key, value in {"prescreen_proxy": p.proxy, "prescreen_k": len(round_), "prescreen_rank": rank,
                               "prescreen_score": _json_float(scores[i]),
                               "prescreen_values": {k: _json_float(v) for k, v in values[i].items()}}.items():
                trial.set_user_attr(key, value)
        winner, wcand = round_[order[0]]
        with self.lock:
            claimed = self._duplicate_of(winner, wcand.genome.to_json())  # trained by another worker meanwhile?
            if claimed is None:
                # The winner takes the place before `first` lets go of it (told below, if it lost): the count
                # may briefly show one place too many taken, never one too few.
                winner.set_user_attr("phase", "training")
                claimed = wcand
        for i in order[1:]:
            trial = round_[i][0]
            trial.set_user_attr("prescreen_lost_to", winner.number)
            trial.set_user_attr("status", "screened")
            self.study.tell(trial, state=TrialState.FAIL)  # why FAIL and not PRUNED: search.prescreen
        losers = ", ".join(f"{round_[i][0].number} ({scores[i]:.4g})" for i in order[1:])
        self.log(f"trial {winner.number:>4}  chosen    best of {len(round_)} by {p.proxy} ({scores[order[0]]:.4g})"
                 + (f"; screened out: {losers}" if losers else ""))
        return winner, claimed

    def _train(self, trial: optuna.Trial, cand: _Candidate) -> tuple[str, str]:
        s, n, tag, a = self.settings, trial.number, cand.tag, cand.analysis
        multi_objective = len(self.study.directions) > 1

        def on_epoch(stats) -> bool:
            if multi_objective:  # Trial.report / should_prune raise in multi-objective studies
                return False
            trial.report(float(stats.val_acc), int(stats.epoch))
            # Never prune after the last epoch: the trial has finished and is complete.
            return int(stats.epoch) < s.trial_epochs and trial.should_prune()

        t0 = time.time()
        try:
            with Heartbeat(self.study, trial._trial_id):
                result = self.train_fn(cand.genome, on_epoch)
        except Exception as e:  # CUDA out of memory, a bad genome for this input size...: next candidate
            reason = _first_line(e)
            trial.set_user_attr("failed_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {n:>4}  failed    {reason}{tag}")
            return "failed", reason
        for key, value in {"epochs": result.epochs, "train_seconds": round(result.train_seconds, 3),
                           "images_per_s": round(result.images_per_s, 1), "device": result.device,
                           "train_status": result.status, "wall_seconds": round(time.time() - t0, 3)}.items():
            trial.set_user_attr(key, value)
        if result.status == "diverged":
            trial.set_user_attr("failed_reason", result.message or "diverged")
            self.study.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {n:>4}  failed    {result.message}{tag}")
            return "failed", result.message
        trial.set_user_attr("trained", True)
        pruned = result.status == "stopped"
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, objective_values(result.val_acc, a, s.objectives))
        outcome = "pruned" if pruned else "completed"
        c = self.counts()
        self.log(f"trial {n:>4}  {outcome:<9} val {result.val_acc:.4f}  {a.params:>9,} params  "
                 f"{a.macs / 1e6:6.1f} M MACs  {a.peak_activations / 1e3:5.0f} k peak act  RF {a.rf:>3}  "
                 f"{result.epochs} ep  {result.train_seconds:6.1f} s  ({c.trained}/{self.n_trials} trained){tag}")
        return outcome, ""

    def _budget_taken(self, number: int) -> bool:
        """Whether the study holds n_trials trained or training trials without trial `number`.

        Workers race for the last places: each checks before it marks its trial as training. An earlier
        trial (lower number) of another worker that is still being checked may take a place first, so we
        wait for its verdict; a later one waits for ours. Waiting ends after claim_wait_seconds, for an
        earlier trial whose worker died before its verdict.
        """
        end = time.monotonic() + self.claim_wait_seconds
        while True:
            trials = self.study.get_trials(deepcopy=False)
            c = count(trials)  # c.running: trials in training (not this one: it is not marked yet)
            if c.trained + c.running >= self.n_trials:
                return True
            # Not waited for: trials holding a place (counted in c.running) and a round's other proposals
            # (phase "screening": the round's place is already reserved).
            checking = sum(t.state == TrialState.RUNNING and t.number < number
                           and t.user_attrs.get("phase") not in (*HOLDS_PLACE, "screening") for t in trials)
            if c.trained + c.running + checking < self.n_trials or time.monotonic() > end:
                return False
            time.sleep(0.05)  # an earlier trial's check takes a few storage round trips

    def _duplicate_of(self, trial: optuna.Trial, genome_json: str) -> tuple[str, str] | None:
        """Copy the result of an earlier trial of the same genome instead of training it again."""
        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.user_attrs.get("genome") != genome_json:
                continue
            k = kind(t)
            if k == "running" and t.user_attrs.get("phase") == "training":
                trial.set_user_attr("duplicate_of", t.number)
                trial.set_user_attr("status", "duplicate")  # told its original's state and value; never trained
                self.study.tell(trial, state=TrialState.FAIL)  # another worker is training it right now
            elif k == "completed":
                trial.set_user_attr("duplicate_of", t.number)
                trial.set_user_attr("status", "duplicate")
                self.study.tell(trial, t.values)
            elif k == "pruned":
                trial.set_user_attr("duplicate_of", t.number)
                trial.set_user_attr("status", "duplicate")
                for step, value in sorted(t.intermediate_values.items()):
                    trial.report(value, step)
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                continue
            self.log(f"trial {trial.number:>4}  duplicate of trial {t.number} ({k}): not trained again")
            return "duplicate", f"trial {t.number}"
        return None
