"""`search.run --jobs N`: N worker processes on one study, on one node, over its devices (search.placement).

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
  * `--jobs auto`: 1 on a CPU (one process already uses every core); on CUDA, per GPU, see `auto_jobs`.
  * Several GPUs: worker k trains on the k-th device round-robin and sees that one alone (search.placement);
    workers sharing a device share its memory on purpose (search.memory).
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

from .placement import GIB_PER_JOB, MAX_JOBS_PER_GPU, Placement, place
from .settings import SearchError

__all__ = ["SlotLock", "parse_jobs", "auto_jobs", "plan_workers", "cpu_threads", "worker_argv", "run_workers",
           "GIB_PER_JOB", "MAX_AUTO_JOBS"]

MAX_AUTO_JOBS = MAX_JOBS_PER_GPU  # per GPU (search.placement); all GPUs together: at most a CPU core per worker


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


def auto_jobs(device) -> int:
    """Workers for `--jobs auto` on a device or list of devices (a --device value, or torch.devices): 1 on
    CPU/MPS; on CUDA, per GPU, its free memory / GIB_PER_JOB (at most MAX_AUTO_JOBS), all together capped by
    the CPU cores this process may use (each worker's Python thread launches its kernels).

    A rule of thumb from memory, not a measurement: `python -m search.bench --device cuda` measures the
    aggregate throughput of 1, 2, 4, ... jobs on the node's GPUs and shows where it stops growing.
    """
    return plan_workers(device, "auto").jobs


def plan_workers(device, jobs: int | str) -> Placement:
    """Which device each of `jobs` workers (or `auto`) trains on: `device` is a --device value (a bare cuda:
    every visible GPU) or a list of devices."""
    from train.device import available_cpus, check_devices

    devices = check_devices(device) if isinstance(device, str) else list(device)
    return place([str(d) for d in devices], None if jobs == "auto" else int(jobs), cpus=available_cpus())


def cpu_threads(jobs: int) -> int:
    """Intra-op threads per worker so that N workers together use the cores once, not N times over."""
    from train.device import available_cpus
    return max(1, available_cpus() // jobs)


def worker_argv(argv: list[str], index: int, device: str | None = None) -> list[str]:
    """The parent's command line for worker `index`: same flags, --jobs 1 for itself, worker mode, no retrain;
    with `device`, that --device instead of the parent's."""
    dropped = ("--jobs", "--device") if device else ("--jobs",)
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in dropped:
            skip = True
            continue
        if arg.startswith(tuple(f"{flag}=" for flag in dropped)):
            continue
        out.append(arg)
    return [*out, *(["--device", device] if device else []), "--worker", str(index), "--no-final"]


def run_workers(argv: list[str], jobs: int, threads: int, log=print, placement: Placement | None = None
                ) -> tuple[list[int], bool]:
    """Run `python -m search.run ARGV` as `jobs` workers and wait for all; (exit codes, interrupted). With a
    `placement`, worker k trains on its device, which it sees alone (Placement.env).

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by search.run) is passed on to the workers as
    SIGTERM and waited out; further signals meanwhile are ignored, so that no worker is left behind.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    interrupted = False
    try:
        for k in range(jobs):  # inside the try: a Ctrl-C while starting them still stops those started
            own = placement.env(k, env) if placement else env
            device = placement.argv_device(k) if placement else None
            procs.append(subprocess.Popen([sys.executable, "-m", "search.run", *worker_argv(argv, k, device)],
                                          env=own, process_group=0))
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
