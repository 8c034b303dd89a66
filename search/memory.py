"""Device memory shared on purpose, and what an out-of-memory does to a trial.

Workers sharing one GPU (search.workers) each cap their share of it (`apply_share`: the device's memory
less every worker's CUDA context, split evenly, by torch.cuda.set_per_process_memory_fraction) and hand
their cached blocks back after every trial, so that no worker keeps its peak for the rest of the search.

A trial that runs out of memory (torch.OutOfMemoryError, or a cuDNN/cuBLAS allocation failure, which arrives
as a plain RuntimeError) frees its tensors (its traceback, which holds the frames holding the model and the
activations, is dropped before the cache is emptied) and is tried once more, in the same trial:
  * alone on its device, when other workers share it: they finish their running trials and start no new one
    until the retry is done (`DeviceShare.alone`), and its cap is lifted to the whole device meanwhile;
  * at half the batch (and half the learning rate: the linear rule of train.defaults), when it is already
    alone there.
Epochs the first attempt already reported to the pruner are not reported again. If it still does not fit,
`TooLarge` is raised: the search records the candidate as "too large for this device" (search.lifecycle), a
constraint the sampler sees, and goes on.
"""
from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from .settings import one_line

__all__ = ["CONTEXT_GIB", "TooLarge", "is_out_of_memory", "release_memory", "memory_fraction", "apply_share",
           "DeviceShare", "guard"]

CONTEXT_GIB = 0.5  # GPU memory a process's CUDA context takes outside the caching allocator (and its cap), GiB
_MARKERS = ("out of memory", "_alloc_failed")  # torch's and CUDA's "out of memory", CUBLAS_/CUDNN_STATUS_ALLOC_FAILED


class TooLarge(RuntimeError):
    """The candidate ran out of device memory twice; the message is one line, beginning 'too large'."""


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError, or any error (or its cause, e.g. inside torch.compile) that says memory ran out."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def release_memory() -> None:
    """Free what unreferenced tensors still hold: Python's cycles first, then CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_fraction(workers: int, total_bytes: int, alone: bool = False) -> float:
    """The share of a device's memory one of `workers` processes may allocate: the device less their CUDA
    contexts, split evenly (`alone`: all of that, for a retry while the others wait)."""
    usable = max(total_bytes - workers * CONTEXT_GIB * 2**30, 0.05 * total_bytes) / total_bytes
    return usable if alone else usable / workers


def apply_share(device: str, workers: int, alone: bool = False) -> float | None:
    """Cap this process's allocations on a CUDA `device` shared by `workers` (none for one worker, or off
    CUDA); returns the fraction set, or None."""
    dev = torch.device(device)
    if dev.type != "cuda" or workers < 2:
        return None
    fraction = memory_fraction(workers, torch.cuda.get_device_properties(dev).total_memory, alone)
    torch.cuda.set_per_process_memory_fraction(fraction, dev)
    return fraction


def _lock(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, mode)  # released by the kernel if this process dies
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class DeviceShare:
    """The workers of one search on one device. Each trial trains under a shared lock (`shared`); a retry
    takes it exclusively (`alone`). A gate lock in front keeps new trials from overtaking a waiting retry."""

    def __init__(self, key: str, device: str = "cpu", workers: int = 1, folder: str | Path | None = None):
        digest = hashlib.sha256(f"{key}\n{device}".encode()).hexdigest()[:16]
        base = Path(folder or tempfile.gettempdir()) / f"tinynas-device-{digest}"
        self.gate, self.path = Path(f"{base}.gate"), Path(f"{base}.lock")
        self.device, self.workers = device, workers

    @contextmanager
    def shared(self) -> Iterator[None]:
        gate = _lock(self.gate, fcntl.LOCK_EX)
        try:
            fd = _lock(self.path, fcntl.LOCK_SH)
        finally:
            _unlock(gate)
        try:
            yield
        finally:
            if self.workers > 1:  # between trials, and before a waiting retry gets the device
                release_memory()
            _unlock(fd)

    @contextmanager
    def alone(self) -> Iterator[None]:
        gate = _lock(self.gate, fcntl.LOCK_EX)  # no new trial starts here meanwhile
        try:
            fd = _lock(self.path, fcntl.LOCK_EX)  # the running ones finish first
            try:
                apply_share(self.device, self.workers, alone=True)
                yield
            finally:
                release_memory()
                apply_share(self.device, self.workers)
                _unlock(fd)
        finally:
            _unlock(gate)


TrainOnce = Callable[..., object]  # (genome, config, on_epoch) -> TrainResult, i.e. train.engine.train's shape


def _attempt(train_once: TrainOnce, genome, config, on_epoch) -> tuple[object | None, str]:
    """(result, "") or, after an out-of-memory, (None, the error's line) once the trial's tensors are freed."""
    try:
        return train_once(genome, config, on_epoch), ""
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        error = one_line(e)  # a string: nothing of the trial's frames is kept
    # Out of the except block: the exception, its traceback and the frames holding the model, activations and
    # gradients are gone, so emptying the cache now gives their memory back.
    release_memory()
    return None, error


def guard(train_once: TrainOnce, config, share: DeviceShare) -> Callable:
    """train_fn(genome, on_epoch) for search.loop: train under `share`, retried once after an out-of-memory
    (module docstring); the result carries `oom_retry` (how, and after what) when it was retried."""

    def train_fn(genome, on_epoch):
        reported = [0]  # the last epoch the first attempt showed the pruner

        def first_on_epoch(stats):
            reported[0] = int(stats.epoch)
            return on_epoch(stats)

        with share.shared():
            result, error = _attempt(train_once, genome, config, first_on_epoch)
        if not error:
            return result

        def retry_on_epoch(stats):  # the pruner already judged these epochs: not again
            return False if int(stats.epoch) <= reported[0] else on_epoch(stats)

        if share.workers > 1:
            how = f"alone on its device (shared by {share.workers} workers)"
            with share.alone():
                result, again = _attempt(train_once, genome, config, retry_on_epoch)
        elif config.batch_size >= 2:
            half = config.batch_size // 2
            how = f"at half the batch ({half})"
            smaller = replace(config, batch_size=half, lr=config.lr * half / config.batch_size,
                              eval_batch_size=max(1, config.eval_batch_size // 2))
            result, again = _attempt(train_once, genome, smaller, retry_on_epoch)
        else:
            raise TooLarge(f"too large for this device: out of memory at batch 1 ({error}), which cannot be halved")
        if again:
            raise TooLarge(f"too large for this device: out of memory at batch {config.batch_size} ({error}), "
                           f"and again when tried {how}" + (f" ({again})" if again != error else ""))
        return replace(result, oom_retry=f"out of memory ({error}); trained {how}")

    return train_fn
