"""`python -m search.worker --worker K FLAGS`: one of `search.run --jobs N`'s worker processes (search.workers).

Started by the parent with the parent's own flags (its --jobs and --device replaced: search.workers.worker_argv);
it opens the same study, trains candidates in the search loop until the study holds --trials trained, and
exits. It never announces, enqueues presets or retrains: the parent does those, once. A SIGTERM or SIGINT
fails its running trial cleanly (queued again) and ends it with status 130; the parent says what happened.
It dies with its parent, even one killed with SIGKILL (`_die_with_parent`).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

from space.cli import run_cli

from .cli import ERRORS
from .launch import build_parser, configure, open_run, search_here
from .loop import SearchStopped
from .storage import STORAGE_ERRORS, lost_storage
from .workers import PARENT_ENV, STOP, quiet_lost_interrupts, request_stop

__all__ = ["main"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal this process gets when its parent dies


def _stop_once(signum, frame):  # one SIGTERM/SIGINT stops it; more must not cut its cleanup short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request_stop(signum, frame)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its parent: a parent killed with SIGKILL passes nothing on. On Linux the
    kernel sends this process SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG); everywhere a daemon
    thread also checks once a second that the parent is still the one that started it. Either way the worker
    stops as on Ctrl-C: its running trial failed and queued again, so the same command resumes."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # no prctl here: the thread below still watches
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    STOP.clear()
    # before anything slow: from here on a stop signal fails the running trial cleanly
    signal.signal(signal.SIGTERM, _stop_once)
    signal.signal(signal.SIGINT, _stop_once)
    parent = os.environ.get(PARENT_ENV)
    if parent:  # started by search.run --jobs (not by hand): it lives as long as its parent
        _die_with_parent(int(parent))
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser("python -m search.worker", __doc__)
    parser.add_argument("--worker", type=int, required=True, help="this worker's index among the parent's --jobs")
    args = parser.parse_args(argv)
    run = open_run(configure(args, argv), worker=args.worker)
    try:
        search_here(run, args.trials)
    except KeyboardInterrupt:
        return 130  # the parent says what happened, once
    except SearchStopped as e:
        print(f"error: [w{args.worker}] {e}", file=sys.stderr)
        return 1
    except STORAGE_ERRORS as e:
        raise lost_storage(run.label, e) from None
    return 0


if __name__ == "__main__":
    sys.unraisablehook = quiet_lost_interrupts  # a lost KeyboardInterrupt is obeyed, not printed (search.workers)
    run_cli(main, errors=ERRORS)
