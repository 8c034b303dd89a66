"""`search.run --jobs N`: N worker processes on one study, on one node, sharing its device.

The parent process creates the study (settings, presets) and starts N copies of the same command in
worker mode (`--worker K`); each loads the data once, runs the ask/train/tell loop of search.loop until
the study holds --trials trained candidates, and exits. The parent waits, then does the final retrain.

  * Exact count: a worker decides to train a candidate only while holding `SlotLock`, an exclusive file
    lock on this machine named after the storage and study, so N workers never start more runs than
    --trials leaves (see search.lifecycle.claim).
  * Ctrl-C (SIGINT) or SIGTERM to the parent: the workers run in their own process group, so the parent
    alone gets the terminal's Ctrl-C and passes it on once, as SIGTERM (which silently ends a worker still
    starting up, before it can have a trial). Each worker fails its running trial as "interrupted" (queued
    again) and exits 130; the parent waits for all of them, prints one line and exits 130. The same
    command resumes.
  * A worker that dies (SIGKILL, out of memory) leaves a RUNNING trial whose pid is gone: the next
    `reap_dead_trials` of any worker (or of the next run) fails it and queues the candidate again.
  * `--jobs auto`: 1 on a CPU (one process already uses every core); on CUDA, see `auto_jobs`.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .settings import SearchError

__all__ = ["SlotLock", "parse_jobs", "auto_jobs", "cpu_threads", "worker_argv", "run_workers",
           "GIB_PER_JOB", "MAX_AUTO_JOBS"]

GIB_PER_JOB = 4.0  # GPU memory one worker may take, GiB: CUDA context ~0.5, CIFAR-10 uint8 0.15, a 200k-parameter
# net's bf16 activations at batch 256 ~1-2, evaluation at batch 1024 ~0.5, plus headroom for the allocator
MAX_AUTO_JOBS = 8  # beyond this the trials' Python launch overhead, one CPU core each, is the limit


class SlotLock:
    """An exclusive lock (fcntl.flock) shared by every process on this machine that uses `key`."""

    def __init__(self, key: str, folder: str | Path | None = None):
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = Path(folder or tempfile.gettempdir()) / f"tinynas-{digest}.lock"
        self._fd: int | None = None

    def __enter__(self) -> SlotLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def parse_jobs(text: str) -> int | str:
    """'auto' or a positive count."""
    if text == "auto":
        return text
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise SearchError(f"--jobs must be a positive integer or auto, got {text!r}")
    return jobs


def auto_jobs(device: str) -> int:
    """Workers for `--jobs auto` on a device: 1 on CPU/MPS; on CUDA free memory / GIB_PER_JOB, capped by
    the CPU cores this process may use (each worker's Python thread launches its kernels) and MAX_AUTO_JOBS.

    A rule of thumb from memory, not a measurement: `python -m search.bench --device cuda` measures the
    aggregate throughput of 1, 2, 4, ... jobs on the node and shows where it stops growing.
    """
    import torch
    from train.device import available_cpus, resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(dev)
    return max(1, min(int(free / 2**30 // GIB_PER_JOB), available_cpus(), MAX_AUTO_JOBS))


def cpu_threads(jobs: int) -> int:
    """Intra-op threads per worker so that N workers together use the cores once, not N times over."""
    from train.device import available_cpus
    return max(1, available_cpus() // jobs)


def worker_argv(argv: list[str], index: int) -> list[str]:
    """The parent's command line for worker `index`: same flags, --jobs 1 for itself, worker mode, no retrain."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--jobs":
            skip = True
            continue
        if arg.startswith("--jobs="):
            continue
        out.append(arg)
    return [*out, "--worker", str(index), "--no-final"]


def run_workers(argv: list[str], jobs: int, threads: int, log=print) -> tuple[list[int], bool]:
    """Run `python -m search.run ARGV` as `jobs` workers and wait for all; (exit codes, interrupted).

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by search.run) is passed on to the workers as
    SIGTERM and waited out; further signals meanwhile are ignored, so that no worker is left behind.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    interrupted = False
    try:
        for k in range(jobs):  # inside the try: a Ctrl-C while starting them still stops those started
            procs.append(subprocess.Popen([sys.executable, "-m", "search.run", *worker_argv(argv, k)], env=env,
                                          process_group=0))
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    for k, code in enumerate(codes):
        if code not in (0, 130, -signal.SIGTERM) and not interrupted:
            log(f"worker {k} exited with status {code}")
    return codes, interrupted
