"""Which device each `--jobs` worker trains on, and what its environment tells it.

A node's GPUs are all used: the workers are spread round-robin over the devices `--device` names (a bare
`cuda`, or `auto` on a CUDA node: every visible GPU; `cuda:0,cuda:2`: those two; `cuda:1`: that one), so
`--jobs 8` on 4 GPUs puts 2 on each. `--jobs auto` sizes per GPU, from each one's free memory (auto_counts).
A worker sees one device: its CUDA_VISIBLE_DEVICES holds that GPU alone (the parent's entry for it, so a
Slurm or user mask carries over) and its --device is `cuda:0`; TINYNAS_GPU names the GPU as the parent
does (for its log and its lock) and TINYNAS_GPU_SHARE says how many workers share it (search.memory caps
each one's memory by it). The parent's final retrain runs on the first device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

__all__ = ["GIB_PER_JOB", "MAX_JOBS_PER_GPU", "DEVICE_ENV", "SHARE_ENV", "Placement", "place", "auto_counts",
           "visible_entries", "worker_device"]

GIB_PER_JOB = 4.0  # GPU memory one worker may take, GiB: CUDA context ~0.5, CIFAR-10 uint8 0.15, a 200k-parameter
# net's bf16 activations at batch 256 ~1-2, evaluation at batch 1024 ~0.5, plus headroom for the allocator
MAX_JOBS_PER_GPU = 8  # beyond this one GPU's queue is full: more workers only add launch overhead (a CPU core each)
DEVICE_ENV = "TINYNAS_GPU"  # the worker's device as the parent names it, e.g. cuda:2 (the worker sees cuda:0)
SHARE_ENV = "TINYNAS_GPU_SHARE"  # how many workers share that device


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
    import torch
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free / 2**30


def worker_device(env: dict[str, str] | None = None) -> tuple[str | None, int]:
    """(the device as the parent names it, workers sharing it) for this worker; (None, 1) outside --jobs."""
    env = os.environ if env is None else env
    return env.get(DEVICE_ENV), max(1, int(env.get(SHARE_ENV, "1") or 1))
