"""Pieces shared by the search commands: the parser, the study arguments, and the errors they turn into
one "error: ..." line with exit status 2."""
from __future__ import annotations

import argparse
import sys

import optuna

from space.genome import GenomeError
from space.spec import CliParser
from train.data import DataError
from train.device import DeviceError

from space import PRESETS

from .locate import locate
from .settings import SearchError
from .storage import open_storage, redact

__all__ = ["ERRORS", "make_parser", "add_study_args", "add_final_args", "parse_compare", "open_existing",
           "positive_int"]

ERRORS = (SearchError, DataError, GenomeError, DeviceError)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the commands print their own one line per trial


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the command's docstring as written, and whose errors are one line."""
    return CliParser(prog=prog, description=(doc or "").strip())


def add_study_args(p: argparse.ArgumentParser, reading: bool = True) -> None:
    """--storage and --study-name; `reading`: the command opens an existing study (see search.locate)."""
    p.add_argument("--storage", default=None,
                   help="Optuna storage: sqlite:///FILE, postgresql://..., mysql://..., FILE.db, or a journal file "
                        "(FILE.log, FILE.journal, journal:FILE) that several processes can share "
                        + ("(default: sqlite:///results/<study>.db, else the study storages in results/)" if reading
                           else "(default: sqlite:///results/<study>.db)"))
    p.add_argument("--study-name", default=None,
                   help="study name (default: " + ("the only study, or the most recent one, in the storage)" if reading
                                                   else "<dataset>-nas)"))


def open_existing(args: argparse.Namespace) -> tuple[optuna.Study, str]:
    """(study, storage URL) for commands that read a study search.run created; says on stderr which one it
    picked when --storage or --study-name left that open."""
    from .study import load_study

    found = locate(args.storage, args.study_name)
    storage = open_storage(found.url, create=False)
    study = load_study(storage, found.name, redact(found.url))
    if found.note:
        print(f"using {found.note}", file=sys.stderr)
    return study, redact(found.url)


def positive_int(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SearchError(f"{flag} must be a positive integer, got {value}")


DEFAULT_COMPARE = "presets"  # --compare's default: the seed presets that meet the study's rules
STUDY_PREFIX = "study:"  # --compare study:NAME: another study's winner


def add_final_args(p: argparse.ArgumentParser) -> None:
    """The final retrain's seeds and baselines (search.compare), for search.run and search.retrain alike."""
    p.add_argument("--final-seeds", type=int, default=1, metavar="N",
                   help="retrain the winner (and each --compare net) from N seeds and report mean +- std; the "
                        "exported weights are the first seed's (default 1; 3 or more on a GPU)")
    p.add_argument("--compare", default=None, metavar="NAMES",
                   help="baselines retrained with the winner's final recipe and seeds: comma-separated preset "
                        "names, trial numbers, study:NAME (another study's winner, e.g. a --sampler random "
                        "control), 'presets' (default: the seed presets that meet the study's rules) or 'none'")
    p.add_argument("--compare-storage", default=None, metavar="URL",
                   help="where --compare study:NAME is looked up (default: this study's storage)")


def parse_compare(text: str | None) -> list[str]:
    """The --compare names, checked for syntax before anything is trained (a bad preset name fails here);
    [] for 'none'. Trial numbers and studies are looked up later (search.compare.resolve_entrants)."""
    text = DEFAULT_COMPARE if text is None else text.strip()
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names or [""]:
        if n not in PRESETS and n != DEFAULT_COMPARE and not n.isdigit() and not (
                n.startswith(STUDY_PREFIX) and len(n) > len(STUDY_PREFIX)):
            raise SearchError(f"--compare: {n!r} is neither a preset ({', '.join(PRESETS)}), a trial number, "
                              "study:NAME, 'presets' nor 'none'")
    return list(dict.fromkeys(names))
