"""Which study a reading command (report, export, retrain) means when the user does not say it all.

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

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import optuna

from train.files import RESULTS
from .settings import SearchError
from .storage import (_JOURNAL_SUFFIXES, _SQLITE_SUFFIXES, default_journal, default_storage, local_file, open_storage,
                      redact, resolve_url)

__all__ = ["Found", "storage_files", "search_studies", "locate"]



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
    from .study import SETTINGS_KEY

    summaries = optuna.get_all_study_summaries(open_storage(url, create=False))
    return [s.study_name for s in sorted(summaries, key=lambda s: getattr(s, "_study_id", 0))
            if SETTINGS_KEY in s.user_attrs]


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
