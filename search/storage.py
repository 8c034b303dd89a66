"""Where a study lives: `--storage` parsed into an Optuna storage.

    (none)                          results/<study>.journal if that file exists (what `search.run --jobs N`
                                    creates), else sqlite:///results/<study>.db, one process at a time
    results/x.db, x.sqlite, x.sqlite3  the same, for another file
    sqlite:///PATH                  any SQLAlchemy URL Optuna accepts; postgresql://user:pw@host/db and
    postgresql://..., mysql://...   mysql+pymysql://... let workers on several nodes share one study
    journal:PATH, PATH.log, PATH.journal   Optuna's append-only journal file: several processes (or
                                    nodes on a file system with working locks, e.g. NFS v4) share it

Sharing a study between workers: start the same `python -m search.run --storage URL --study-name NAME
--no-final ...` in every process (TPE's constant liar keeps them apart), then run `python -m
search.retrain` once. SQLite allows only one writer at a time; use a journal file or a server database.

`search.run --jobs N` (N > 1) without --storage uses the journal file results/<study>.journal, since
SQLite takes one writer; a study begun in results/<study>.db is copied there first (`migrate_to_journal`;
the .db is left as it was and no longer used, because every command looks for the journal first).

RDB storages get Optuna's heartbeat (a RUNNING trial whose worker stopped beating for GRACE_PERIOD
seconds is failed and queued again); the journal file has no heartbeat in Optuna 5, so search.liveness.Heartbeat
keeps one in a user attr instead.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from train.files import RESULTS
from .settings import SearchError, one_line

__all__ = ["HEARTBEAT_INTERVAL", "GRACE_PERIOD", "STORAGE_ERRORS", "default_storage", "default_journal",
           "resolve_url", "open_storage", "is_sqlite", "migrate_to_journal", "dashboard_command", "is_rdb",
           "redact", "local_file", "lost_storage"]

HEARTBEAT_INTERVAL = 60  # seconds between the heartbeats of a running trial
GRACE_PERIOD = 300  # seconds without a heartbeat after which a RUNNING trial's worker counts as dead

_JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
# The drivers this project's extras install, by the module SQLAlchemy imports for the URL.
_DRIVER_EXTRAS = {"psycopg": "postgres"}
# What a database server that goes away mid-run raises: Optuna wraps failed commits in StorageInternalError,
# reads raise SQLAlchemy's own errors (OperationalError: connection refused, ...).
STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def default_storage(study_name: str, results_dir: str | Path = RESULTS) -> str:
    return f"sqlite:///{Path(results_dir) / f'{study_name}.db'}"


def default_journal(study_name: str, results_dir: str | Path = RESULTS) -> str:
    """Where a study lives that several local workers (`search.run --jobs N`) write to."""
    return f"journal:{Path(results_dir) / f'{study_name}.journal'}"


def resolve_url(spec: str | None, study_name: str) -> str:
    """A canonical URL: 'sqlite:///...', another SQLAlchemy URL, or 'journal:PATH'.

    Without a spec: the study's journal file if it exists (a --jobs run made it), else its SQLite file.
    """
    if not spec:
        journal = default_journal(study_name)
        return journal if Path(journal[len("journal:"):]).is_file() else default_storage(study_name)
    if spec.startswith("journal:"):
        return spec
    scheme = spec.split("://", 1)[0].split("+", 1)[0].lower() if "://" in spec else ""
    if scheme in _RDB_SCHEMES:
        return spec
    if scheme:
        raise SearchError(f"unsupported storage URL scheme {scheme!r} in {spec!r}; use sqlite:///FILE, "
                          "postgresql://..., mysql://... or journal:FILE")
    if spec.endswith(_JOURNAL_SUFFIXES):
        return f"journal:{spec}"
    if spec.endswith(_SQLITE_SUFFIXES):
        return f"sqlite:///{spec}"
    raise SearchError(f"cannot tell what storage {spec!r} is: give a URL (sqlite:///FILE, postgresql://...), "
                      f"a file ending {'/'.join(_SQLITE_SUFFIXES)} (SQLite) or {'/'.join(_JOURNAL_SUFFIXES)} "
                      "(journal), or journal:FILE")


def is_rdb(storage: BaseStorage) -> bool:
    backend = getattr(storage, "_backend", storage)  # a study wraps its RDBStorage in Optuna's _CachedStorage
    return isinstance(backend, optuna.storages.RDBStorage)


def open_storage(url: str, create: bool = True,
                 stale_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                 ) -> BaseStorage:
    """Open the storage at a URL from resolve_url; SearchError if it cannot be used.

    create=False (commands that only read a study): a storage file that does not exist is an error
    rather than a new empty database.
    """
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.name:
            raise SearchError(f"journal storage {url!r} names no file")
        _prepare_path(path, create, url)
        try:
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        except Exception as e:  # unreadable or not a journal
            raise SearchError(f"cannot open journal storage {path}: {one_line(e)}") from None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            _prepare_path(Path(path), create, url)
    try:
        return _rdb_storage(url, stale_callback)
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as a bare ImportError
        missing = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        raise SearchError(f"storage {redact(url)} needs {_install_hint(getattr(missing, 'name', None))}") from None
    except Exception as e:  # sqlalchemy.exc.ArgumentError, OperationalError (unreachable), a non-database file
        message = one_line(e).replace(url, redact(url))  # drivers may quote the URL, password and all
        raise SearchError(f"cannot open storage {redact(url)}: {message}") from None


def local_file(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL (None for a database server or :memory:)."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def is_sqlite(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0].lower() == "sqlite"


def migrate_to_journal(sqlite_url: str, journal_url: str, study_name: str) -> bool:
    """Copy a study from its SQLite file into a new journal file; False if there was nothing to copy.

    Written to a temporary file and renamed, so a crash leaves either no journal or a complete one.
    Trials keep their state, attrs and worker identity: a trial left RUNNING by a dead process is
    reaped in the journal as it would have been in SQLite.
    """
    path = Path(sqlite_url[len("sqlite:///"):])
    if not path.is_file():
        return False
    source = open_storage(sqlite_url, create=False)
    if study_name not in {s.study_name for s in optuna.get_all_study_summaries(source)}:
        return False
    target = Path(journal_url[len("journal:"):])
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    optuna.copy_study(from_study_name=study_name, from_storage=source, to_study_name=study_name,
                      to_storage=open_storage(f"journal:{tmp}"))
    tmp.replace(target)
    return True


def _rdb_storage(url: str, stale_callback, attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage creates its tables in an empty database; workers that start together race to do so, and
    the losers get IntegrityError / ProgrammingError (PostgreSQL: duplicate key in pg_type). The tables
    exist by then, so trying again succeeds."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                                              heartbeat_stale_trial_callback=stale_callback)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)  # seconds; jitter so racers part
    raise AssertionError("unreachable")


def _install_hint(module: str | None) -> str:
    if module is None:
        return "a database driver that is not installed"
    package = module.split(".")[0]
    extra = _DRIVER_EXTRAS.get(package)
    if extra:
        return (f"the database driver {package!r}, which the {extra!r} extra installs: pip install -e \".[{extra}]\" "
                "in the tinynas folder")
    return f"the database driver {package!r}: pip install {package}"


def lost_storage(label: str, e: BaseException) -> SearchError:
    """The one-line error for a storage that failed mid-run (one of STORAGE_ERRORS), e.g. a server stopped."""
    cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
    return SearchError(f"lost the storage {label}: {one_line(cause)}; finished trials are kept there: run the "
                       "same command again once it is reachable")


def dashboard_command(url: str) -> str:
    """The shell command that opens the study in optuna-dashboard."""
    if url.startswith("journal:"):
        return f"optuna-dashboard {url[len('journal:'):]}"  # the dashboard reads journal files by path
    return f"optuna-dashboard {url}"


def _prepare_path(path: Path, create: bool, url: str) -> None:
    if not create and not path.is_file():
        raise SearchError(f"no study storage at {path} (run search.run first, or give --storage)")
    parent = path.parent
    if parent.is_dir():
        return
    if not create or parent.exists():
        blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise SearchError(f"storage {url!r}: {blocker} is a file, not a folder; give a path in a folder")
        raise SearchError(f"storage {url!r}: folder {parent} does not exist")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"storage {url!r}: cannot create {parent}: {e.strerror}") from None


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages and reports."""
    # postgresql://user:password@host/db -> postgresql://user:***@host/db: never print a password.
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url

