"""The search loop, with ask/tell so that rejection, deduplication and counting are explicit.

    ask -> genome (space.suggest_genome, or the exact genome an enqueued trial carries)
        -> broken rule?  constraints > 0, tell COMPLETE(0) as "rejected": never trained, not counted
        -> trained before? copy its result as "duplicate": not retrained, not counted
        -> train briefly, reporting validation accuracy per epoch to the pruner
        -> tell COMPLETE(val acc) / PRUNED / FAIL(reason)
until the study holds N trained (completed or pruned) trials, counting those of earlier runs and of
other workers. The training itself is injected (`train_fn`), so tests can drive the loop without torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import optuna
from optuna.trial import TrialState

from space import Genome, analyze, check, suggest_genome

from .constraints import constraint_values
from .liveness import Heartbeat, fail_trial, reap_dead_trials, worker_identity
from .settings import SearchSettings
from .trials import Counts, count, kind

__all__ = ["REJECTED_VALUE", "SearchStopped", "TrainFn", "Search", "make_train_fn"]

REJECTED_VALUE = 0.0  # placeholder accuracy of a rejected trial; TPE ranks it by its constraints instead


class SearchStopped(RuntimeError):
    """The loop gave up (too many failures or rejections in a row); the message is one line."""


class TrainFn(Protocol):
    """Train `genome`, calling on_epoch(stats) after every epoch (True: stop); returns a TrainResult."""

    def __call__(self, genome: Genome, on_epoch: Callable[[object], bool]): ...


def make_train_fn(data, settings: SearchSettings, device: str = "auto") -> TrainFn:
    """The real thing: train.engine.train for settings.trial_epochs, validating after every epoch."""
    from train.augment import AugmentConfig
    from train.engine import TrainConfig, train

    config = TrainConfig(epochs=settings.trial_epochs, batch_size=settings.batch_size, lr=settings.lr,
                         augment=AugmentConfig() if settings.augment else None, device=device, seed=settings.seed,
                         eval_every=1, checkpoint=None)

    def train_fn(genome: Genome, on_epoch: Callable[[object], bool]):
        try:
            return train(genome, config, data, on_epoch=on_epoch)
        except Exception:
            import torch
            if torch.cuda.is_available():  # after an out-of-memory error, give the next candidate a clean slate
                torch.cuda.empty_cache()
            raise

    return train_fn


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
    poll_seconds: float = 10.0  # wait between checks while other workers finish the last trials
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
            if skips >= self.max_skips_in_row:
                raise SearchStopped(f"{skips} candidates in a row were rejected or duplicates; the constraints "
                                    "leave too little room: relax --max-params / --min-rf")

    def step(self) -> tuple[str, str]:
        """One candidate, start to end: (kind, detail)."""
        trial = self.study.ask()
        try:
            return self._evaluate(trial)
        except BaseException as e:  # Ctrl-C, SIGTERM, a storage error: leave nothing RUNNING behind
            frozen = self.study._storage.get_trial(trial._trial_id)
            if frozen.state == TrialState.RUNNING:
                why = "interrupted" if isinstance(e, KeyboardInterrupt) else _first_line(e)
                fail_trial(self.study, frozen, why, retry=True)
                if isinstance(e, KeyboardInterrupt):
                    self.interrupted = trial.number
            raise

    def _evaluate(self, trial: optuna.Trial) -> tuple[str, str]:
        s, n = self.settings, trial.number
        trial.set_user_attr("worker", worker_identity())
        suggested = suggest_genome(trial, num_classes=self.num_classes, max_params=s.max_params, min_rf=s.min_rf)
        carried = trial.user_attrs.get("genome")  # presets and retries carry their exact genome
        genome = Genome.from_json(carried) if carried else suggested
        a = analyze(genome)
        for key, value in constraint_values(genome, s.max_params, s.min_rf).items():
            trial.set_constraint(key, value)
        for key, value in {"genome": genome.to_json(), "summary": genome.summary(), "n_params": a.params,
                           "macs": a.macs, "rf": a.rf}.items():
            trial.set_user_attr(key, value)
        tag = f"  [{trial.user_attrs['preset']}]" if "preset" in trial.user_attrs else ""
        violations = check(genome, s.max_params, s.min_rf)
        if violations:
            reason = "; ".join(violations)
            trial.set_user_attr("rejected", reason)
            self.study.tell(trial, REJECTED_VALUE)
            self.log(f"trial {n:>4}  rejected  {reason}{tag}")
            return "rejected", reason
        dup = self._duplicate_of(trial, genome.to_json())
        if dup is not None:
            return dup
        trial.set_user_attr("phase", "training")

        def on_epoch(stats) -> bool:
            trial.report(float(stats.val_acc), int(stats.epoch))
            # Never prune after the last epoch: the trial has finished and is complete.
            return int(stats.epoch) < s.trial_epochs and trial.should_prune()

        t0 = time.time()
        try:
            with Heartbeat(self.study, trial._trial_id):
                result = self.train_fn(genome, on_epoch)
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
            self.study.tell(trial, float(result.val_acc))
        outcome = "pruned" if pruned else "completed"
        c = self.counts()
        self.log(f"trial {n:>4}  {outcome:<9} val {result.val_acc:.4f}  {a.params:>9,} params  RF {a.rf:>3}  "
                 f"{result.epochs} ep  {result.train_seconds:6.1f} s  ({c.trained}/{self.n_trials} trained){tag}")
        return outcome, ""

    def _duplicate_of(self, trial: optuna.Trial, genome_json: str) -> tuple[str, str] | None:
        """Copy the result of an earlier trial of the same genome instead of training it again."""
        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.user_attrs.get("genome") != genome_json:
                continue
            k = kind(t)
            if k == "running" and t.user_attrs.get("phase") == "training":
                trial.set_user_attr("duplicate_of", t.number)
                self.study.tell(trial, state=TrialState.FAIL)  # another worker is training it right now
            elif k == "completed":
                trial.set_user_attr("duplicate_of", t.number)
                self.study.tell(trial, float(t.value))
            elif k == "pruned":
                trial.set_user_attr("duplicate_of", t.number)
                for step, value in sorted(t.intermediate_values.items()):
                    trial.report(value, step)
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                continue
            self.log(f"trial {trial.number:>4}  duplicate of trial {t.number} ({k}): not trained again")
            return "duplicate", f"trial {t.number}"
        return None
