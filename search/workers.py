"""`search.run --jobs N`: N worker processes on one study, on one node, over its devices, and which device each
one trains on.

The parent process creates the study (settings, presets) and starts N workers, `python -m search.worker
--worker K` with the parent's flags (search.worker); each loads the data once, runs the ask/train/tell loop
of search.loop until the study holds --trials trained candidates, and exits; none outlives the parent. The
parent waits, then does the final retrain.

  * Exact count: a worker decides to train a candidate only while holding `SlotLock`, an exclusive file
    lock on this machine named after the storage and study, so N workers never start more runs than
    --trials leaves (see search.lifecycle.claim).
  * Ctrl-C (SIGINT) or SIGTERM to the parent: the workers run in their own process group, so the parent
    alone gets the terminal's Ctrl-C and passes it on once, as SIGTERM (which silently ends a worker still
    starting up, before it can have a trial). Each worker fails its running trial as "interrupted" (queued
    again) and exits 130; the parent waits for all of them, prints one line and exits 130. The same
    command resumes. A stop is also a flag (STOP), so that one whose KeyboardInterrupt the interpreter
    swallowed still ends the trial at its next epoch.
  * A worker that dies (SIGKILL, out of memory) leaves a RUNNING trial whose pid is gone: the next
    `reap_dead_trials` of any worker (or of the next run) fails it and queues the candidate again.
  * `--jobs auto`: 1 on a CPU (one process already uses every core); on CUDA, per GPU, see `auto_jobs`.
  * Several GPUs: worker k trains on the k-th device round-robin and sees that one alone (below);
    workers sharing a device share its memory on purpose (search.memory).

Which device each worker trains on (`place`, a `Placement`): a node's GPUs are all used: the workers are
spread round-robin over the devices `--device` names (a bare `cuda`, or `auto` on a CUDA node: every visible GPU; `cuda:0,cuda:2`: those two; `cuda:1`: that one), so
`--jobs 8` on 4 GPUs puts 2 on each. `--jobs auto` sizes per GPU, from each one's free memory (auto_counts).
A worker sees one device: its CUDA_VISIBLE_DEVICES holds that GPU alone (the parent's entry for it, so a
Slurm or user mask carries over) and its --device is `cuda:0`; TINYNAS_GPU names the GPU as the parent
does (for its log and its lock) and TINYNAS_GPU_SHARE says how many workers share it (search.memory caps
each one's memory by it). The parent's final retrain runs on the first device.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import train.device  # the module, not its names: a stand-in for train.device.available_cpus reaches it

from .settings import SearchError

__all__ = ["PARENT_ENV", "SlotLock", "parse_jobs", "auto_jobs", "plan_workers", "cpu_threads", "worker_argv", "run_workers",
           "GIB_PER_JOB", "MAX_AUTO_JOBS", "MAX_JOBS_PER_GPU", "DEVICE_ENV", "SHARE_ENV", "Placement", "place",
           "auto_counts", "visible_entries", "worker_device", "STOP", "request_stop", "check_stop",
           "quiet_lost_interrupts"]

GIB_PER_JOB = 4.0  # GPU memory one worker may take, GiB: CUDA context ~0.5, CIFAR-10 uint8 0.15, a 200k-parameter
# net's bf16 activations at batch 256 ~1-2, evaluation at batch 1024 ~0.5, plus headroom for the allocator
MAX_JOBS_PER_GPU = 8  # beyond this one GPU's queue is full: more workers only add launch overhead (a CPU core each)
DEVICE_ENV = "TINYNAS_GPU"  # the worker's device as the parent names it, e.g. cuda:2 (the worker sees cuda:0)
SHARE_ENV = "TINYNAS_GPU_SHARE"  # how many workers share that device


# A stop (Ctrl-C, SIGTERM) as a flag beside the KeyboardInterrupt that search.run's handlers raise. Python runs a
# handler between two bytecodes of whatever runs then; inside a callback whose exceptions the interpreter only
# reports (a weakref callback of importlib, a __del__) the KeyboardInterrupt is lost: "Exception ignored in ...",
# and the process went on training. The flag is not lost: the search loop checks it after every epoch and
# candidate, the parent of --jobs workers every 0.2 s.
STOP = threading.Event()


def request_stop(signum, frame) -> None:
    """A signal handler: the stop flag, then the KeyboardInterrupt that stops whatever runs now."""
    STOP.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was asked for, whether or not its first KeyboardInterrupt got through."""
    if STOP.is_set():
        raise KeyboardInterrupt


def quiet_lost_interrupts(unraisable) -> None:
    """sys.unraisablehook of the commands: a KeyboardInterrupt lost after a stop was asked for is said by
    nobody (check_stop raises it again); anything else is reported as Python does."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and STOP.is_set():
        return
    sys.__unraisablehook__(unraisable)


@dataclass(frozen=True)
class Placement:
    """The device of every worker, as the parent names it ("cuda:2", "cpu")."""

    devices: tuple[str, ...]

    @property
    def jobs(self) -> int:
        return len(self.devices)

    def share(self, k: int) -> int:
        """Workers on worker k's device, itself included."""
        return self.devices.count(self.devices[k])

    def argv_device(self, k: int) -> str:
        """Worker k's --device: cuda:0, the one GPU its CUDA_VISIBLE_DEVICES leaves it; other devices as named."""
        return "cuda:0" if self.devices[k].startswith("cuda") else self.devices[k]

    def env(self, k: int, base: dict[str, str]) -> dict[str, str]:
        """Worker k's environment: `base` plus the device it sees and how many share it."""
        env = {**base, DEVICE_ENV: self.devices[k], SHARE_ENV: str(self.share(k))}
        if self.devices[k].startswith("cuda"):
            index = int(self.devices[k].split(":")[1])
            env["CUDA_VISIBLE_DEVICES"] = visible_entries(base, index + 1)[index]
        return env

    def describe(self) -> str:
        """'cuda:0 x2, cuda:1 x2' (in the order first used)."""
        seen = list(dict.fromkeys(self.devices))
        return ", ".join(f"{d} x{self.devices.count(d)}" for d in seen)


def visible_entries(env: dict[str, str], count: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries (indices or GPU-UUIDs) behind cuda:0 .. cuda:count-1 of a process with
    environment `env`: its own mask's first entries, or 0 .. count-1 without one."""
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is None or not mask.strip():
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in mask.split(",") if e.strip()]
    if len(entries) < count:  # torch saw more devices than the mask lists: the mask is not what torch read
        return [str(i) for i in range(count)]
    return entries[:count]


def auto_counts(devices: list[str], free_gib: Callable[[str], float], cpus: int) -> list[int]:
    """`--jobs auto`'s workers per device: free GiB / GIB_PER_JOB on each GPU (at least 1, at most
    MAX_JOBS_PER_GPU), then cut to the CPU cores, one per worker, taking from the fullest device first; 1 on
    a CPU or MPS (one process already uses every core)."""
    if not devices[0].startswith("cuda"):
        return [1]
    counts = [max(1, min(int(free_gib(d) // GIB_PER_JOB), MAX_JOBS_PER_GPU)) for d in devices]
    while sum(counts) > max(cpus, len(devices)):
        counts[counts.index(max(counts))] -= 1
    return counts


def place(devices: list[str], jobs: int | None, free_gib: Callable[[str], float] | None = None,
          cpus: int = 1) -> Placement:
    """Workers over `devices`: `jobs` of them round-robin (worker k on devices[k % n]), or with jobs None
    (`--jobs auto`) auto_counts' per device, interleaved the same way."""
    if jobs is not None:
        return Placement(tuple(devices[k % len(devices)] for k in range(jobs)))
    counts = auto_counts(devices, free_gib or _free_gib, cpus)
    order = []
    for round_ in range(max(counts)):
        order += [d for d, c in zip(devices, counts) if c > round_]
    return Placement(tuple(order))


def _free_gib(device: str) -> float:
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free / 2**30


def worker_device(env: dict[str, str] | None = None) -> tuple[str | None, int]:
    """(the device as the parent names it, workers sharing it) for this worker; (None, 1) outside --jobs."""
    env = os.environ if env is None else env
    return env.get(DEVICE_ENV), max(1, int(env.get(SHARE_ENV, "1") or 1))


MAX_AUTO_JOBS = MAX_JOBS_PER_GPU  # per GPU (place); all GPUs together: at most a CPU core per worker


class SlotLock:
    """An exclusive lock (fcntl.flock) shared by every process on this machine that uses `key`."""

    def __init__(self, key: str, folder: str | Path | None = None):
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = Path(folder or tempfile.gettempdir()) / f"tinynas-{digest}.lock"
        self._fd: int | None = None

    def __enter__(self) -> SlotLock:
        self.acquire()
        return self

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it, or not: False when another holder has it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:  # released by the kernel if this process dies
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        self.__exit__()

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
    devices = train.device.check_devices(device) if isinstance(device, str) else list(device)
    return place([str(d) for d in devices], None if jobs == "auto" else int(jobs), cpus=train.device.available_cpus())


PARENT_ENV = "TINYNAS_PARENT_PID"  # a worker's parent, which it must not outlive (search.worker)


def cpu_threads(jobs: int) -> int:
    """Intra-op threads per worker so that N workers together use the cores once, not N times over."""
    return max(1, train.device.available_cpus() // jobs)


def worker_argv(argv: list[str], index: int, device: str | None = None) -> list[str]:
    """The parent's command line for worker `index` (python -m search.worker): same flags, without --jobs;
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
    return [*out, *(["--device", device] if device else []), "--worker", str(index)]


def run_workers(argv: list[str], jobs: int, threads: int, log=print, placement: Placement | None = None
                ) -> tuple[list[int], bool]:
    """Run `python -m search.worker ARGV` as `jobs` workers and wait for all; (exit codes, interrupted). With a
    `placement`, worker k trains on its device, which it sees alone (Placement.env).

    A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by search.run) is passed on to the workers as
    SIGTERM and waited out; further signals meanwhile are ignored, so that no worker is left behind.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    procs: list[subprocess.Popen] = []
    interrupted = False
    try:
        for k in range(jobs):  # inside the try: a Ctrl-C while starting them still stops those started
            own = placement.env(k, env) if placement else env
            device = placement.argv_device(k) if placement else None
            procs.append(subprocess.Popen([sys.executable, "-m", "search.worker", *worker_argv(argv, k, device)],
                                          env=own, process_group=0))
        while any(p.poll() is None for p in procs):
            check_stop()
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
