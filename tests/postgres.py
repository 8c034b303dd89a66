"""A throwaway PostgreSQL server for the tests: initdb once per test process, one server per test module
(a copy of that cluster), a fresh database per test.

The server binaries come from Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin, which
.ci/run installs) or from PATH. PostgreSQL refuses to run as root, so as root the cluster belongs to the
`postgres` user and every server command runs through `runuser -u postgres --`. The server listens on
127.0.0.1 only, on a free port, with trust authentication (nothing else can reach a test machine's
loopback port that matters), fsync off (a test database need not survive a power cut).

Outside CI a machine without the server or the driver skips these tests with the reason; with CI=true it
fails them, so that CI can never pass by skipping.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Server", "Database", "unavailable", "make_template"]

SERVER_USER = "postgres"  # Debian's package creates this user
DATABASE = "nas"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it in CI (CI=true), where a missing server is a broken setup."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


def _bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], timeout: float = 120) -> None:
    r = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_dir(prefix: str) -> Path:
    """A new temporary folder the server user owns (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_USER)
    return path


def make_template() -> Path:
    """An initialised, stopped cluster to copy from; raises RuntimeError if this machine cannot make one."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise RuntimeError("running as root without runuser to start the server as another user")
    root = _own_dir("tinynas-pg-template-")
    try:
        _run([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-sync"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(str(e)) from None
    (root / "bin").write_text(str(bin_dir))
    return root


class Server:
    """One running server on a copy of the template cluster; `database` adds an empty database to it."""

    def __init__(self, template: Path):
        self.bin = Path((template / "bin").read_text())
        self.root = _own_dir("tinynas-pg-")
        # cp -a keeps the owner and the 0700 mode that the server insists on.
        subprocess.run(["cp", "-a", str(template / "data"), str(self.root / "data")], check=True)
        self.port = _free_port()
        self.start()
        self.made = 0

    def database(self) -> "Database":
        """A new empty database on this server (nas1, nas2, ...): one per test, so that tests sharing the
        server never see each other's studies."""
        self.made += 1
        name = f"{DATABASE}{self.made}"
        _run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return Database(self, f"postgresql://postgres@127.0.0.1:{self.port}/{name}")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c full_page_writes=off")
        _run([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-w",
              "-t", "60", "-o", options, "start"])

    def stop(self) -> None:
        _run([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "60", "stop"])

    def running(self) -> bool:
        r = subprocess.run(_as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "status"]),
                           capture_output=True)
        return r.returncode == 0

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Database:
    """One test's database: its URL, and the server under it (a test may stop and start it again)."""

    server: Server
    url: str

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()
