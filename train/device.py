"""Where training runs: one way to name, check and compare devices, and the CPU cores this process may use.

Device identity is decided here and nowhere else. torch names a device with or without an index
(`cuda` against `cuda:0`), and the two do not compare equal although a tensor sent to `cuda` reports
`cuda:0`. `canonical_device` therefore gives every device its index (the current one where none was
named; CPU tensors report plain `cpu`, so CPU devices lose theirs), and `same_device` compares canonical
forms. `check_device` turns a `--device` value into a canonical device torch can use, or a DeviceError that
says in one line what torch can see: every command line calls it before writing anything.
"""
from __future__ import annotations

import os
import re
from typing import Callable

import torch

__all__ = ["DeviceError", "resolve_device", "canonical_device", "same_device", "check_device", "check_devices",
           "use_bf16", "available_cpus", "synchronize"]

_DEVICE = re.compile(r"^(auto|cpu|cuda|mps)(:\d+)?$")


class DeviceError(ValueError):
    """A --device this torch cannot use; the message is one line that says what it can see."""


def _current_index(device_type: str) -> int:
    """Index of the device a tensor sent to a bare `cuda` (or `mps`, ...) lands on."""
    if device_type == "cuda":
        return torch.cuda.current_device()
    return 0  # mps and the rest have one device, index 0


def canonical_device(device: torch.device | str,
                     current_index: Callable[[str], int] = _current_index) -> torch.device:
    """The device as tensors on it report it: `cpu` without an index, any other type with one (the current
    device's where none was given). `current_index(type)` is a parameter so tests can stand in for CUDA."""
    device = torch.device(device)
    if device.type in ("cpu", "meta"):
        return torch.device(device.type)
    if device.index is None:
        return torch.device(device.type, current_index(device.type))
    return device


def same_device(a: torch.device | str, b: torch.device | str,
                current_index: Callable[[str], int] = _current_index) -> bool:
    """True when tensors on a and on b live in the same memory (`cpu` and `cpu:0`; `cuda` and `cuda:0` while
    0 is the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    return canonical_device(a, current_index) == canonical_device(b, current_index)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: cuda > mps > cpu, whichever torch can use; any other name as given, in canonical form
    (cuda -> cuda:<current>). Not validated: command lines call check_device first."""
    if str(name) != "auto":
        return canonical_device(name)
    if torch.cuda.is_available():
        return canonical_device("cuda")
    if _mps_available():
        return torch.device("mps", 0)
    return torch.device("cpu")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _visible() -> str:
    """What this torch can use, e.g. 'cpu, cuda:0 (NVIDIA H100)' or 'cpu only'."""
    seen = ["cpu"]
    if torch.cuda.is_available():
        seen += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if _mps_available():
        seen.append("mps")
    return ", ".join(seen) if len(seen) > 1 else "cpu only"


def check_device(name: str) -> torch.device:
    """The canonical device for a --device value, or a DeviceError naming what torch can see. Starts no
    computation there (a CUDA context only where CUDA is present and asked for).

    Spellings are forgiving (` CPU`, `Cuda:01`), the result is not: callers pass on str(the result), never
    the raw value, so that one spelling of each device reaches torch.device and every file written."""
    text = str(name).strip().lower()
    match = _DEVICE.match(text)
    if not match:
        raise DeviceError(f"--device {name!r} is not a device name: use auto, cpu, cuda, cuda:N or mps "
                          f"(torch {torch.__version__} can see: {_visible()})")
    kind = match.group(1)
    index = int(match.group(2)[1:]) if match.group(2) else None  # cuda:01 -> 1 (torch.device refuses "01")
    if kind == "auto":
        return resolve_device("auto")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        count = _cuda_count(name)
        if index is not None and index >= count:
            raise DeviceError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1} "
                              f"(it can see: {_visible()})")
        return canonical_device(torch.device("cuda", index) if index is not None else torch.device("cuda"))
    if not _mps_available():  # mps
        raise DeviceError(f"--device {name}: MPS (Apple-silicon GPUs, macOS only) is not available to torch "
                          f"{torch.__version__}; it can see: {_visible()}")
    return torch.device("mps", index or 0)


def _cuda_count(name: str) -> int:
    """CUDA devices this torch sees; DeviceError (one line) when none."""
    if torch.version.cuda is None:
        raise DeviceError(f"--device {name}: this torch ({torch.__version__}) is a CPU-only build and cannot use "
                          f"CUDA (it can see: {_visible()}); a CUDA build of torch is needed: on a node where "
                          "nvidia-smi works, `./setup.sh env` installs one")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {name}: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA "
                          "device (is nvidia-smi working? is CUDA_VISIBLE_DEVICES empty?); it can see: cpu only")
    return count


def check_devices(name: str) -> list[torch.device]:
    """The devices a --device value names for several worker processes, canonical, or a DeviceError.

    A bare `cuda` (or `auto` where CUDA is present) means every visible CUDA device, cuda:0 .. cuda:N-1; one
    indexed device means that one; a comma-separated list (`cuda:0,cuda:2`) those, each once, of one type;
    cpu or mps is the one device."""
    parts = [p.strip() for p in str(name).split(",")]
    if len(parts) == 1:
        device = check_device(parts[0])
        bare = parts[0].lower() in ("cuda", "auto")
        if device.type == "cuda" and bare:
            return [torch.device("cuda", i) for i in range(_cuda_count(name))]
        return [device]
    devices = [check_device(p) for p in parts]
    if len({d.type for d in devices}) > 1 or devices[0].type != "cuda":
        raise DeviceError(f"--device {name}: a list names CUDA devices only (e.g. cuda:0,cuda:2)")
    if len(set(devices)) < len(devices):
        raise DeviceError(f"--device {name}: names a device twice; each device once (--jobs sets how many "
                          "workers share them)")
    return devices


def use_bf16(device: torch.device, amp: bool, bf16_supported: Callable[[], bool] | None = None) -> bool:
    """Whether to train under bf16 autocast: asked for, on CUDA, and the GPU has bf16 (Ampere and later; an
    older GPU trains in float32 instead of failing or emulating bf16 slowly)."""
    if not amp or torch.device(device).type != "cuda":
        return False
    supported = bf16_supported or (lambda: _bf16_on(torch.device(device)))
    return bool(supported())


def _bf16_on(device: torch.device) -> bool:
    """Whether this CUDA device (not the current one) computes bf16 natively: compute capability 8.0 (Ampere)
    or later, as torch.cuda.is_bf16_supported(including_emulation=False) decides for the current device."""
    return torch.cuda.get_device_capability(canonical_device(device)) >= (8, 0)


def available_cpus() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, cgroup cpusets, Slurm), not the machine's
    count, which os.cpu_count() gives."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def synchronize(device: torch.device | str) -> None:
    """Wait for `device`'s queued work (a no-op off CUDA): torch.cuda.synchronize() without an argument waits
    on the current device, not necessarily the one a cuda:N run uses."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
