"""The search loop: Search.step (one candidate, ask to tell) and Search.run (steps until N are trained).

One candidate (Search.step), in the shape of Optuna's own `_run_trial`; its state is search.lifecycle's.
Each arrow decides the trial's Verdict (a value), which lifecycle.tell tells, once:
    ask -> genome (space.suggest_genome, or the exact genome an enqueued trial carries)
        -> broken rule?  constraints > 0, tell PRUNED (no value) as "rejected": never trained, not counted
        -> trained before? copy its result as "duplicate": not retrained, not counted
        -> claim one of the N places (lifecycle.claim, under the lock the workers of a node share);
           none left: FAIL "not trained" (a preset or retry is queued again)
        -> --prescreen K (search.prescreen): ask until K feasible proposals, score them by a zero-cost proxy,
           keep the best, tell the other K - 1 FAIL as "screened" (never trained, not counted)
        -> train briefly inside one heartbeat, reporting validation accuracy per epoch to the pruner; out of
           memory: freed and tried once more (search.memory)
        -> tell COMPLETE(val acc) / PRUNED / FAIL(reason) / "too large" (out of memory twice: PRUNED with the
           constraint memory = 1, never trained, not counted)
In a multi-objective study (search.settings.OBJECTIVES) every value told is [accuracy, cost], and nothing is
reported per epoch (Optuna cannot prune such studies); a rejected candidate is PRUNED there too.
Search.run repeats it until the study holds N trained (completed or pruned) trials, counting those of
earlier runs and of other workers. The training itself is injected (`train_fn`), so tests can drive the
loop without torch.
"""
from __future__ import annotations

import dataclasses
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import optuna

from space import Analysis, Genome, analyze, check, construct, constraint_values
from space.latency import predict_latency
from train import engine  # the module: engine.train is looked up at each call (a test's stand-in reaches it)

from .lifecycle import (Counts, Outcome, Phase, Verdict, abandon, claim, count, duplicate_of, failed, free_places,
                        heartbeat, is_enqueued, mark, not_trained, objective_values, reap_dead_trials, rejected,
                        screened, sign, tell, too_large, trained)
from .memory import DeviceShare, TooLarge, guard
from .record import TrialRecord, candidate_values, prescreen_values, training_values, write
from .settings import SearchSettings, one_line
from .workers import check_stop

if TYPE_CHECKING:  # injected like train_fn: the round's scoring is the prescreen's business
    from .prescreen import Prescreen

__all__ = ["SearchStopped", "TrainFn", "Search", "make_train_fn"]



@dataclass(frozen=True)
class _Candidate:
    """A feasible, new genome reserved for training."""

    genome: Genome
    analysis: Analysis  # its exact params, MACs, RF, peak activations
    tag: str  # "  [preset]" or ""
    latency_ms: float | None = None  # predicted by the study's latency table (None without one)


class SearchStopped(RuntimeError):
    """The loop gave up (too many failures or rejections in a row); the message is one line."""


class TrainFn(Protocol):
    """Train `genome`, calling on_epoch(stats) after every epoch (True: stop); returns a TrainResult."""

    def __call__(self, genome: Genome, on_epoch: Callable[[object], bool]): ...


def make_train_fn(data, settings: SearchSettings, device: str = "auto", share: DeviceShare | None = None,
                  bar: bool = False) -> TrainFn:
    """The real thing: train.engine.train for settings.trial_epochs, validating after every epoch (plain
    accuracy only: the pruner and the leaderboard read no flip-TTA), under `share` (this worker's device and
    the workers sharing it; default: alone), retried once after an out-of-memory (search.memory); `bar`: a
    tqdm bar per epoch (the line per epoch is Search's, with the trial's number)."""
    config = settings.train_config(settings.trial_epochs, device, eval_every=1, checkpoint=None, tta=False,
                                   progress=bar, progress_bar=bar, epoch_lines=False)
    return guard(lambda genome, cfg, on_epoch: engine.train(genome, cfg, data, on_epoch=on_epoch), config,
                 share or DeviceShare(f"pid {os.getpid()}", device))


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
    # Held while deciding to train a candidate; shared by all workers of a node (search.workers.SlotLock).
    lock: AbstractContextManager = field(default_factory=nullcontext)
    claim_wait_seconds: float = 30.0  # longest wait for an earlier trial's verdict (lifecycle.claim)
    prescreen: Prescreen | None = None  # train the best of K feasible proposals by a proxy (None: every one)
    epoch_lines: bool = False  # log a line when a trial starts and after each of its epochs (nobody thinks it hung)
    interrupted: int | None = field(default=None, init=False)  # the trial a Ctrl-C / SIGTERM stopped
    last_failure: str = field(default="", init=False)  # the reason of the last training failure
    # The ids of the trials the current step asked (only _ask adds to it): what step fails if it stops early.
    _asked: list[int] = field(default_factory=list, init=False, repr=False)

    def counts(self) -> Counts:
        return count(self.study.get_trials(deepcopy=False))

    def run(self) -> Counts:
        failures = skips = 0
        while True:
            check_stop()
            for n in reap_dead_trials(self.study):
                self.log(f"trial {n:>4}  failed    its worker died or went silent (a trained candidate is queued "
                         "again)")
            c = self.counts()
            if c.trained >= self.n_trials:
                return c
            outcome = self.step() if c.trained + c.running < self.n_trials else Outcome.NO_PLACE
            if outcome == Outcome.NO_PLACE:  # the rest is being trained by other workers
                time.sleep(self.poll_seconds)
                continue
            # Failures in a row among the candidates that reached training (rejections in between do not
            # reset the count); skips in a row among all candidates.
            if outcome in (Outcome.COMPLETED, Outcome.PRUNED):
                failures = 0
            elif outcome in (Outcome.FAILED, Outcome.TOO_LARGE):
                failures += 1
            skips = skips + 1 if outcome in (Outcome.REJECTED, Outcome.DUPLICATE) else 0
            if failures >= self.max_failures_in_row:
                raise SearchStopped(f"{failures} candidates in a row failed in training (last: {self.last_failure});"
                                    " fix the cause, then run the same command to resume")
            self._check_skips(skips)

    def step(self) -> Outcome:
        """One candidate, start to end, in the shape of Optuna's own `_run_trial`: one ladder decides the
        trial's Verdict, a value (rejected, a duplicate, no place left; else trained: completed, pruned, or
        failed in training), and lifecycle.tell tells it, once. Nothing it asked is left RUNNING, whatever
        stops it (Ctrl-C, SIGTERM, a storage error: failed, queued again where it had reached training, and
        re-raised)."""
        self._asked = []
        try:
            found = self._candidate()
            if found is None:
                return Outcome.NO_PLACE
            trial, cand, verdict = found
            return self._tell(trial, cand, verdict or self._train(trial, cand))
        except BaseException as e:
            self._abandon(e)
            raise

    def _train(self, trial: optuna.Trial, cand: _Candidate) -> Verdict:
        """Train the candidate inside one heartbeat; an error in training is its verdict: too large (out of
        memory twice, search.memory: infeasible here, and the search goes on), or failed (a bad genome for this
        input size...). A stop (Ctrl-C, SIGTERM) is not: it propagates."""
        if self.epoch_lines:
            a = cand.analysis
            self.log(f"trial {trial.number:>4}  training  {a.params:,} params  {a.macs / 1e6:.1f} M MACs  "
                     f"{cand.genome.summary()}{cand.tag}")
        t0 = time.time()
        try:
            with heartbeat(self.study, trial):
                result = self.train_fn(cand.genome, self._on_epoch(trial))
        except TooLarge as e:
            self.last_failure = str(e)
            return too_large(self.last_failure)
        except Exception as e:
            self.last_failure = one_line(e)
            return failed(self.last_failure)
        return self._judge(trial, cand, result, time.time() - t0)

    def _ask(self) -> optuna.Trial:
        trial = self.study.ask()
        self._asked.append(trial._trial_id)
        return trial

    def _abandon(self, e: BaseException) -> None:
        stopped = abandon(self.study, self._asked, e)
        if isinstance(e, KeyboardInterrupt) and stopped is not None:
            self.interrupted = stopped

    def _tell(self, trial: optuna.Trial, cand: _Candidate | None, verdict: Verdict) -> Outcome:
        """Tell the step's trial its verdict (lifecycle.tell) and log one line."""
        outcome = tell(self.study, trial, verdict)
        self.log(self._line(trial, cand, verdict))
        return outcome

    def _line(self, trial: optuna.Trial, cand: _Candidate | None, verdict: Verdict) -> str:
        n, tag, k = trial.number, cand.tag if cand else "", verdict.outcome
        if k == Outcome.DUPLICATE:
            return f"trial {n:>4}  duplicate {verdict.note}"
        if k == Outcome.TOO_LARGE:  # its note begins "too large for this device"
            return f"trial {n:>4}  {verdict.note}{tag}"
        if k == Outcome.NO_PLACE:
            return f"trial {n:>4}  skipped   {verdict.note} (another worker claimed the last one){tag}"
        if k in (Outcome.COMPLETED, Outcome.PRUNED):
            return f"trial {n:>4}  {k:<9} {verdict.note}  ({self.counts().trained}/{self.n_trials} trained){tag}"
        return f"trial {n:>4}  {k:<9} {verdict.note}{tag}"  # rejected, failed

    def _candidate(self) -> tuple[optuna.Trial, _Candidate | None, Verdict | None] | None:
        """(trial, candidate, None) for a candidate that holds a place to train (the prescreen's winner, with
        one); (trial, candidate or None, verdict) for one told without training; None when the others hold
        every place (nothing asked).

        Deciding to train happens under the lock: count, ask, check the candidate, claim the place. Workers
        holding the same lock therefore never start more training runs than --trials leaves. With a
        prescreen the first feasible proposal reserves the place; the lock is let go while the round's other
        proposals are asked and scored (seconds), and taken again to hand the place to the winner.
        """
        with self.lock:
            if not free_places(self.study, self.n_trials):
                return None
            trial = self._ask()
            cand, verdict = self._propose(trial)
            if verdict is not None:
                return trial, cand, verdict
            screen = self.prescreen is not None and self.prescreen.k > 1 and not is_enqueued(trial)
            if not claim(self.study, trial, self.n_trials, Phase.RESERVED if screen else Phase.TRAINING,
                         self.claim_wait_seconds):
                return trial, cand, not_trained(
                    f"not trained: the study already has {self.n_trials} trials trained or in training")
        return self._screen(trial, cand) if screen else (trial, cand, None)

    def _check_skips(self, skips: int) -> None:
        """Give up after max_skips_in_row rejected or duplicate candidates in a row (in rounds or not)."""
        if skips >= self.max_skips_in_row:
            raise SearchStopped(f"{skips} candidates in a row were rejected or duplicates; the constraints "
                                "leave too little room: relax --max-params / --min-rf")

    def _propose(self, trial: optuna.Trial) -> tuple[_Candidate, Verdict | None]:
        """Record the candidate; (candidate, None) if it is feasible and new, else with its verdict: rejected,
        or a duplicate of an earlier trial that trained (or is training) the same genome."""
        s = self.settings
        sign(trial)
        built = construct(trial, s.rules, num_classes=self.num_classes, version=s.construction, space=s.space)
        record = TrialRecord.of(trial)
        carried = record.genome_of()  # presets and retries carry their exact genome
        genome = carried or built.genome
        a = analyze(genome)
        ms = predict_latency(genome, s.latency_table).ms if s.latency_table is not None else None
        for key, value in constraint_values(genome, s.rules).items():
            trial.set_constraint(key, value)
        write(trial, **candidate_values(genome, a, ms))
        cand = _Candidate(genome, a, f"  [{record.preset}]" if record.preset is not None else "", ms)
        violations = check(genome, s.rules)
        if violations:
            reason = "; ".join(violations + ([built.note] if built.note and not carried else []))
            return cand, rejected(reason)
        return cand, duplicate_of(self.study, trial, genome.to_json())

    def _screen(self, first: optuna.Trial, cand: _Candidate) -> tuple[optuna.Trial, _Candidate, Verdict | None]:
        """The prescreen round that `first` (holding a reserved place) opens: up to K feasible proposals,
        scored; returns the winner, now in training, or with its verdict if another worker started training
        the winner's genome meanwhile (a duplicate). See search.prescreen."""
        round_ = self._gather(first, cand)
        p = self.prescreen
        order, scores, values = p.rank([c.genome for _, c in round_])
        for rank, i in enumerate(order, 1):
            write(round_[i][0], **prescreen_values(p.proxy, len(round_), rank, scores[i], values[i]))
        winner, wcand = round_[order[0]]
        with self.lock:
            verdict = duplicate_of(self.study, winner, wcand.genome.to_json())  # trained by another meanwhile?
            if verdict is None:
                # The winner takes the place before `first` lets go of it (told below, if it lost): the count
                # may briefly show one place too many taken, never one too few.
                mark(winner, Phase.TRAINING)
        for i in order[1:]:
            tell(self.study, round_[i][0], screened(winner.number))
        losers = ", ".join(f"{round_[i][0].number} ({scores[i]:.4g})" for i in order[1:])
        self.log(f"trial {winner.number:>4}  chosen    best of {len(round_)} by {p.proxy} ({scores[order[0]]:.4g})"
                 + (f"; screened out: {losers}" if losers else ""))
        return winner, wcand, verdict

    def _gather(self, first: optuna.Trial, cand: _Candidate) -> list[tuple[optuna.Trial, _Candidate]]:
        """The round's feasible proposals, `first` first; rejected ones and duplicates are told and logged as
        without a prescreen."""
        round_ = [(first, cand)]
        skips = 0
        while len(round_) < self.prescreen.k:
            trial = self._ask()
            if is_enqueued(trial):  # another worker queued a retry meanwhile: it is trained on its own, later
                tell(self.study, trial, not_trained("not trained: it came up during another trial's prescreen; "
                                                    "queued again"))
                break
            proposed, verdict = self._propose(trial)
            if verdict is not None:
                self._tell(trial, proposed, verdict)
                skips += 1
                self._check_skips(skips)
                continue
            skips = 0
            mark(trial, Phase.SCREENING)
            round_.append((trial, proposed))
        return round_

    def _on_epoch(self, trial: optuna.Trial) -> Callable[[object], bool]:
        multi_objective = len(self.study.directions) > 1

        def on_epoch(stats) -> bool:
            check_stop()  # a stop whose KeyboardInterrupt was lost (search.workers.STOP) ends the trial here
            if self.epoch_lines:
                self.log(f"trial {trial.number:>4}  epoch {stats.epoch}/{self.settings.trial_epochs}  train acc "
                         f"{stats.train_acc:.4f}  val {stats.val_acc:.4f}  {stats.seconds:.1f} s")
            if multi_objective:  # Trial.report / should_prune raise in multi-objective studies
                return False
            trial.report(float(stats.val_acc), int(stats.epoch))
            # Never prune after the last epoch: the trial has finished and is complete.
            return int(stats.epoch) < self.settings.trial_epochs and trial.should_prune()

        return on_epoch

    def _judge(self, trial: optuna.Trial, cand: _Candidate, result, wall_seconds: float) -> Verdict:
        """The verdict on a training run: failed if it diverged, pruned if stopped, else completed."""
        write(trial, **training_values(result, wall_seconds))
        if result.oom_retry:  # trained after one out-of-memory (search.memory)
            self.log(f"trial {trial.number:>4}  retried   {result.oom_retry}{cand.tag}")
        if result.status == "diverged":
            self.last_failure = result.message or "diverged"
            return failed(self.last_failure)
        a = cand.analysis
        values = None if result.status == "stopped" else objective_values(result.val_acc, a, self.settings.objectives,
                                                                           cand.latency_ms)
        return dataclasses.replace(trained(values, result.oom_retry), note=(
            f"val {result.val_acc:.4f}  {a.params:>9,} params  {a.macs / 1e6:6.1f} M MACs  "
            f"{a.peak_activations / 1e3:5.0f} k peak act  RF {a.rf:>3}  {result.epochs} ep  "
            f"{result.train_seconds:6.1f} s"))
