"""Pieces shared by the search commands: the parser, the study arguments, and the errors they turn into
one "error: ..." line with exit status 2."""
from __future__ import annotations

import argparse

import optuna

from space.genome import GenomeError
from space.spec import fail
from train.data import DataError

from .settings import SearchError
from .storage import open_storage, redact, resolve_url

__all__ = ["ERRORS", "DEFAULT_STUDY", "make_parser", "add_study_args", "open_existing", "positive_int"]

ERRORS = (SearchError, DataError, GenomeError)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the commands print their own one line per trial
DEFAULT_STUDY = "cifar10-nas"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        fail(message)


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the command's docstring as written, and whose errors are one line."""
    return _Parser(prog=prog, description=(doc or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter)


def add_study_args(p: argparse.ArgumentParser, study_default: str | None = DEFAULT_STUDY) -> None:
    p.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE, postgresql://..., mysql://..., FILE.db, or a journal file "
                        "(FILE.log, FILE.journal, journal:FILE) that several processes can share "
                        "(default: sqlite:///results/<study>.db)")
    p.add_argument("--study-name", default=study_default,
                   help=f"study name (default: {study_default or '<dataset>-nas'})")


def open_existing(args: argparse.Namespace) -> tuple[optuna.Study, str]:
    """(study, storage URL) for commands that read a study search.run created."""
    from .study import load_study

    url = resolve_url(args.storage, args.study_name)
    storage = open_storage(url, create=False)
    return load_study(storage, args.study_name, redact(url)), redact(url)


def positive_int(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SearchError(f"{flag} must be a positive integer, got {value}")
