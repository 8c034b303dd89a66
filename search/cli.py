"""Pieces shared by the search commands: the parser, the study arguments and which study they mean, and the
errors they turn into one "error: ..." line with exit status 2.

Which study a reading command (report, export, retrain) means when the user does not say it all (`locate`):
    --storage and --study-name   exactly that study
    --storage only               the only search study in that storage, or the most recently created one
    --study-name only            results/<name>.journal or results/<name>.db, else the storage file in results/ holding that study
    neither                      the only search study in the storage files of results/, or the one in the
                                 most recently written file (newest study within it)
The choice is said on stderr, with the others and how to pick one; when nothing fits, SearchError lists
what exists. Only files that are an Optuna SQLite database or journal are opened: scanning never creates
or changes a file.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna

from space.genome import GenomeError
from space.rules import RulesError
from space.cli import CliParser
from train.data import DataError
from train.device import DeviceError
from train.files import RESULTS

from space import PRESETS

from .compare import DEFAULT_COMPARE, STUDY_PREFIX, TRIAL_MARK
from .settings import SearchError
from .storage import (_JOURNAL_SUFFIXES, _SQLITE_SUFFIXES, default_journal, default_storage, local_file, open_storage,
                      redact, resolve_url)
from .study import SETTINGS_KEY, load_study

__all__ = ["ERRORS", "make_parser", "add_study_args", "add_final_args", "parse_compare", "open_existing",
           "positive_int", "Found", "storage_files", "search_studies", "locate"]

ERRORS = (SearchError, DataError, GenomeError, DeviceError, RulesError)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the commands print their own one line per trial


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the command's docstring as written, and whose errors are one line."""
    return CliParser(prog=prog, description=(doc or "").strip())


def add_study_args(p: argparse.ArgumentParser, reading: bool = True) -> None:
    """--storage and --study-name; `reading`: the command opens an existing study (see locate)."""
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
    found = locate(args.storage, args.study_name)
    storage = open_storage(found.url, create=False)
    study = load_study(storage, found.name, redact(found.url))
    if found.note:
        print(f"using {found.note}", file=sys.stderr)
    return study, redact(found.url)


def positive_int(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SearchError(f"{flag} must be a positive integer, got {value}")


def add_final_args(p: argparse.ArgumentParser) -> None:
    """The final retrain's seeds and baselines (search.compare), for search.run and search.retrain alike."""
    p.add_argument("--final-seeds", type=int, default=1, metavar="N",
                   help="retrain the winner (and each --compare net) from N seeds and report mean +- std; the "
                        "exported weights are the first seed's (default 1; 3 or more on a GPU)")
    p.add_argument("--compare", default=None, metavar="NAMES",
                   help="baselines retrained with the winner's final recipe and seeds: comma-separated preset "
                        "names, trial numbers, study:NAME (another study's winner, e.g. a --sampler random "
                        "control), study:NAME#N (its trial N), 'presets' (default: the seed presets that meet the study's rules) or 'none'")
    p.add_argument("--compare-storage", default=None, metavar="URL",
                   help="where --compare study:NAME is looked up (default: this study's storage)")
    p.add_argument("--finalists", type=int, default=1, metavar="K",
                   help="retrain the K best trials for the final epochs on the search split and make the best of "
                        "them by validation accuracy the winner (default 1: the best trial; see docs/search.md)")


def parse_compare(text: str | None) -> list[str]:
    """The --compare names, checked for syntax before anything is trained (a bad preset name fails here);
    [] for 'none'. Trial numbers and studies are looked up later (search.compare.resolve_entrants)."""
    text = DEFAULT_COMPARE if text is None else text.strip()
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names or [""]:
        if n not in PRESETS and n != DEFAULT_COMPARE and not n.isdigit() and not _study_spec(n):
            raise SearchError(f"--compare: {n!r} is neither a preset ({', '.join(PRESETS)}), a trial number, "
                              "study:NAME, study:NAME#N, 'presets' nor 'none'")
    return list(dict.fromkeys(names))


def _study_spec(n: str) -> bool:
    """study:NAME or study:NAME#N (N a trial number)."""
    if not n.startswith(STUDY_PREFIX) or len(n) == len(STUDY_PREFIX):
        return False
    name, mark, number = n[len(STUDY_PREFIX):].rpartition(TRIAL_MARK)
    return not mark or (bool(name) and number.isdigit())


@dataclass(frozen=True)
class Found:
    url: str  # canonical storage URL (resolve_url)
    name: str  # study name
    note: str = ""  # how it was chosen, for stderr; "" when the user named both


def _is_optuna_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # read-only: never create tables in a stray file
        try:
            return con.execute("select 1 from sqlite_master where type='table' and name='studies'").fetchone() is not None
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return False


def _is_journal(path: Path) -> bool:
    try:
        with open(path) as f:
            first = f.readline()
        return "op_code" in json.loads(first)
    except (OSError, ValueError, TypeError):
        return False


def storage_files(folder: Path = RESULTS) -> list[str]:
    """Storage URLs of the Optuna SQLite and journal files directly in `folder`, most recently written first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if p.is_file() and p.suffix in _SQLITE_SUFFIXES and _is_optuna_sqlite(p):
            found.append((p.stat().st_mtime, f"sqlite:///{p}"))
        elif p.is_file() and p.suffix in _JOURNAL_SUFFIXES and _is_journal(p):
            found.append((p.stat().st_mtime, f"journal:{p}"))
    return [url for _, url in sorted(found, reverse=True)]


def search_studies(url: str) -> list[str]:
    """Names of the studies search.run created in the storage at `url`, newest last."""
    summaries = optuna.get_all_study_summaries(open_storage(url, create=False))
    return [summary.study_name for summary in sorted(summaries, key=lambda s: getattr(s, "_study_id", 0))
            if SETTINGS_KEY in summary.user_attrs]


def _listing(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} ({redact(url)})" for url, name in pairs)


def locate(storage: str | None, study_name: str | None, folder: Path = RESULTS) -> Found:
    """The storage and study a reading command should open; SearchError when none fits."""
    if storage:
        url = resolve_url(storage, study_name or "")
        if study_name:
            return Found(url, study_name)
        names = search_studies(url)
        if not names:
            raise SearchError(f"no search study in {redact(url)} (run search.run first)")
        if len(names) == 1:
            return Found(url, names[0], f"study {names[0]} (the only one in {redact(url)})")
        return Found(url, names[-1], f"study {names[-1]}, the newest of {len(names)} in {redact(url)} "
                                     f"(others: {', '.join(names[:-1])}; choose with --study-name)")
    if study_name:  # the journal first: search.run --jobs N moved the study there (storage.resolve_url)
        for url in (default_journal(study_name, folder), default_storage(study_name, folder)):
            if local_file(url).is_file():
                return Found(url, study_name)
    pairs = []  # (url, name) over the storages in folder, most recently written storage first
    for u in storage_files(folder):
        try:
            pairs += [(u, n) for n in reversed(search_studies(u))]
        except SearchError:
            continue  # unreadable: not ours to judge here
    if study_name:
        match = [(u, n) for u, n in pairs if n == study_name]
        if match:
            return Found(match[0][0], study_name, f"study {study_name} in {redact(match[0][0])}")
        where = f"no study storage at {folder / f'{study_name}.db'}"
        if pairs:
            raise SearchError(f"{where} and no study {study_name!r} in {folder}/; studies there: {_listing(pairs)}; "
                              "give one with --study-name (and --storage)")
        raise SearchError(f"{where} (run search.run first, or give --storage)")
    if not pairs:
        raise SearchError(f"no study in {folder}/ (run search.run first, or give --storage and --study-name)")
    url, name = pairs[0]
    if len(pairs) == 1:
        return Found(url, name, f"study {name} in {redact(url)} (the only one in {folder}/)")
    return Found(url, name, f"study {name} in {redact(url)}, the most recent of {len(pairs)} in {folder}/ "
                            f"(others: {_listing(pairs[1:])}; choose with --study-name)")
