"""The tests' shared helpers: a fake training function, in-memory studies, a command run in-process (`call`:
its main; `run_main`: its `python -m` entry point) and its one `error:` line (`one_error_line`), subprocess
runners, an out-of-memory hook for commands (`oom_env`), CIFAR-10 files written from arrays."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import runpy
import signal
import subprocess
import sys
import threading
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest

from search.cli import ERRORS
from search.context import FinalPlan, Run
from search.settings import SearchSettings
from search.study import enqueue_presets, make_pruner, open_study
from space import Genome, analyze
from space.cli import run_cli
from train.data import ImageData
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


def final_run(study: optuna.Study, s: SearchSettings, data: ImageData, out: Path, epochs: int, *,
              log=lambda _line: None, **plan) -> Run:
    """The Run a final retrain of `study` into `out` takes: `epochs` epochs on the CPU, the FinalPlan's other
    fields (seeds, compare, trial, ...) as keywords."""
    return Run(study, s, data, Path(out), device="cpu", log=log, final=FinalPlan(epochs, **plan))


def run_module(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@contextmanager
def process_state_kept():
    """Run a command in this process and put back what a command changes for the whole process: the
    working folder, sys.argv, sys.unraisablehook and the SIGINT / SIGTERM handlers (search.run's stop)."""
    argv, here, hook = sys.argv, os.getcwd(), sys.unraisablehook
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        sys.argv, sys.unraisablehook = argv, hook
        os.chdir(here)
        for s, handler in handlers.items():
            signal.signal(s, handler)


def run_main(module: str, *args: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in this process: the module's own `__main__` block runs (its run_cli and the
    error classes it turns into one `error:` line), without a new interpreter's seconds of imports. Returns
    what run_module does (returncode, stdout, stderr); stdout and stderr are captured here, not by pytest.
    Each command also has a real subprocess run in the suite."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    with process_state_kept():
        sys.argv = [module, *args]
        if cwd is not None:
            os.chdir(cwd)
        try:
            with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules" (imported here)
                runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_threads(workers, timeout: float = 120) -> None:
    """Run each worker's `run` in its own thread and wait for all (several workers of one process)."""
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)


def call(main, argv: list[str], capsys, errors=ERRORS) -> tuple[int, str, str]:
    """A command's main run in-process the way `python -m` runs it (space.cli.run_cli turns `errors` into
    one `error:` line and exit 2): (exit code, stdout, stderr)."""
    with process_state_kept(), pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv), errors=errors)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_error_line(err: str, *texts: str) -> None:
    """stderr is one `error:` line holding every one of `texts`, and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(t in lines[0] for t in texts), err


def last_error_line(err: str, text: str) -> str:
    """The single `error:` line of stderr, its last line (info lines may come before it), holding `text`; no
    traceback. Returns it."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0] and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def write_cifar_batches(folder: str | Path, data: ImageData, n_train_batches: int = 5) -> Path:
    """Write `data` as data_batch_1..5, test_batch and batches.meta in the official CIFAR-10 python format
    (protocol-2 pickles of dicts with bytes keys, channel-major uint8 rows); returns the folder. The training
    images are spread over `n_train_batches` files and the remaining of the five are written empty."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_files = [f"data_batch_{i}" for i in range(1, 6)]

    def dump(name: str, x: np.ndarray, y: np.ndarray, label: str) -> None:
        rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3 * 32 * 32))
        payload = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
                   b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(len(x))]}
        with open(folder / name, "wb") as f:
            pickle.dump(payload, f, protocol=2)

    chunks = np.array_split(np.arange(len(data.x_train)), n_train_batches)
    chunks += [np.arange(0)] * (len(train_files) - n_train_batches)
    for i, (name, idx) in enumerate(zip(train_files, chunks)):
        dump(name, data.x_train[idx], data.y_train[idx], f"training batch {i + 1} of 5")
    dump("test_batch", data.x_test, data.y_test, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in data.classes],
                     b"num_vis": 3 * 32 * 32}, f, protocol=2)
    return folder


# A sitecustomize.py for commands a test starts (see oom_env): the first candidate any process trains runs
# out of memory every time (as a cuDNN allocation failure), the second once (torch.OutOfMemoryError); the
# files under TINYNAS_TEST_OOM record which genomes they were.
OOM_HOOK = '''
import os
from pathlib import Path
if os.environ.get("TINYNAS_TEST_OOM"):
    import torch
    import train.engine as engine
    real, marks = engine.train, Path(os.environ["TINYNAS_TEST_OOM"])

    def claim(name, genome):  # the first training run anywhere to claim a mark owns it
        try:
            fd = os.open(marks / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return (marks / name).read_text() == genome
        os.write(fd, genome.encode())
        os.close(fd)
        return True

    def train(genome, config, data, on_epoch=None):
        js = genome.to_json()
        if claim("never_fits", js):  # this candidate runs out of memory every time (a cuDNN allocation)
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
        if claim("once", js) and not (marks / "once.done").exists():  # this one once
            (marks / "once.done").write_text("")
            held = torch.zeros(1000)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(genome, config, data, on_epoch=on_epoch)

    engine.train = train
'''


def oom_env(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose Python processes load OOM_HOOK, and the folder of its marks (never_fits, once)."""
    hook, marks = tmp_path / "hook", tmp_path / "marks"
    hook.mkdir(), marks.mkdir()
    (hook / "sitecustomize.py").write_text(OOM_HOOK)
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TINYNAS_TEST_OOM": str(marks),
            "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}, marks
