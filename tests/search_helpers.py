"""Test doubles for the search: a fake training function, in-memory studies, CLI runners."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.settings import SearchSettings
from search.study import enqueue_presets, make_pruner, open_study
from space import Genome, analyze
from train.engine import EpochStats, TrainResult

ROOT = Path(__file__).resolve().parents[1]
# 96 training / 32 validation / 64 test images, one epoch of 6 steps: seconds per candidate even for the heaviest nets
# on a CPU. 100k parameters: seed003_net (84k) trains first, the other two presets are rejected.
TINY = ["--dataset", "synthetic", "--subset-train", "128", "--subset-test", "64", "--trial-epochs", "1",
        "--final-epochs", "1", "--batch-size", "16", "--max-params", "100000"]


def Stats(epoch: int, val_acc: float) -> EpochStats:
    """The engine's per-epoch record, with made-up training figures."""
    return EpochStats(epoch, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=val_acc, lr=0.1, seconds=0.01,
                      images_per_s=1000.0)


def FakeResult(status: str, history: list[EpochStats], message: str = "") -> TrainResult:
    return TrainResult(status, history, model=None, message=message, device="cpu")


def fake_accuracy(genome: Genome) -> float:
    """A deterministic 'accuracy' in (0.3, 0.95): more parameters help, with a per-genome jitter."""
    jitter = int(hashlib.sha256(genome.to_json().encode()).hexdigest()[:6], 16) / 16**6
    return 0.3 + 0.5 * min(analyze(genome).params / 200_000, 1.0) + 0.15 * jitter


@dataclass
class FakeTrain:
    """Stands in for train.engine.train: a learning curve rising to fake_accuracy over `epochs`."""

    epochs: int = 3
    fail: dict = field(default_factory=dict)  # genome json -> exception to raise, or "diverge"
    calls: list[str] = field(default_factory=list)  # genome JSON of every training run
    finished: list[str] = field(default_factory=list)  # ... of runs that were not stopped

    def __call__(self, genome: Genome, on_epoch):
        js = genome.to_json()
        self.calls.append(js)
        what = self.fail.get(js, self.fail.get("*"))
        if isinstance(what, BaseException):
            raise what
        history = []
        for e in range(1, self.epochs + 1):
            if what == "diverge":
                return FakeResult("diverged", history, f"non-finite training loss in epoch {e}")
            history.append(Stats(e, fake_accuracy(genome) * (0.5 + 0.5 * e / self.epochs)))
            if on_epoch(history[-1]):
                return FakeResult("stopped", history, f"stopped by the caller after epoch {e}")
        self.finished.append(js)
        return FakeResult("completed", history)


def settings(**changes) -> SearchSettings:
    base = dict(dataset="synthetic", max_params=200_000, min_rf=44, trial_epochs=3, val_size=0.25, seed=0,
                subset_train=None, batch_size=32, lr=0.025, augment=False)
    return SearchSettings(**{**base, **changes})


def memory_study(s: SearchSettings | None = None, pruner: str = "none", presets: bool = True,
                 storage=None) -> optuna.Study:
    s = s or settings()
    storage = storage or optuna.storages.InMemoryStorage()
    study, _ = open_study(storage, "test", s, make_pruner(pruner, s.trial_epochs))
    if presets:
        enqueue_presets(study, 10)
    return study


def run_module(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def run_threads(workers, timeout: float = 120) -> None:
    """Run each worker's `run` in its own thread and wait for all (several workers of one process)."""
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
