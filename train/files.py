"""Files written whole or not at all, and a command that fails on its inputs removing what it created."""
from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["RESULTS", "DATA_DIR", "first_missing", "removed_on_error", "write_atomic", "write_json", "finite_or_none"]

RESULTS = Path("results")  # where every command writes by default: studies, reports, models, benchmarks
DATA_DIR = "data"  # --data-dir's default: holds cifar-10-batches-py/ (downloaded there if absent)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` beside `path`, then rename it over `path`: a crash mid-write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent)))


def finite_or_none(value: Any) -> Any:
    """`value` as strict JSON can hold it, for write_json and Optuna's user attrs: a NaN or infinite float (NaN
    marks a figure not measured, e.g. an epoch without evaluation; json.dumps would write NaN or Infinity,
    which is not JSON) becomes None (null), any other float (a NumPy one too) a plain float; a value that is
    not a float (an int, a bool, a string, None) is returned as it is."""
    if isinstance(value, numbers.Integral) or not isinstance(value, numbers.Real):
        return value
    return float(value) if math.isfinite(value) else None


def first_missing(path: str | Path) -> Path | None:
    """The outermost folder (or the file itself) of `path` that does not exist yet; None if it all exists."""
    path = Path(path).absolute()
    if path.exists():
        return None
    missing = path
    while not missing.parent.exists():
        missing = missing.parent
    return missing


@contextmanager
def removed_on_error(*paths: str | Path) -> Iterator[None]:
    """Run the block; if it raises (an error, Ctrl-C), remove whatever of `paths` it created (a file, or the
    outermost new folder with all in it), then re-raise. What existed before is never touched."""
    fresh = [m for m in map(first_missing, paths) if m is not None]
    try:
        yield
    except BaseException:
        for m in fresh:
            if m.is_dir():
                shutil.rmtree(m, ignore_errors=True)
            elif m.exists():
                m.unlink(missing_ok=True)
        raise
