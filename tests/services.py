"""Real services for the tests: PostgreSQL databases, private Redis servers, free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get(
    "CXR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DICOM = SHARED / "data" / "dicom"


def require(condition: bool, reason: str) -> None:
    """Skip locally, but fail in CI (CI=true), when a real service or tool is missing."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def shared_file(name: str) -> Path:
    path = SHARED_DICOM / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data is not beside this checkout)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(log: Path | str | None, lines: int = 30) -> str:
    """The last lines of a process's log, for a failure message ('' without one)."""
    if log is None:
        return ""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def wait_port(
    port: int,
    timeout: float = 10.0,
    *,
    process: subprocess.Popen[Any] | None = None,
    log: Path | str | None = None,
) -> None:
    """Wait until something listens on ``port``.

    With ``process``: fail at once, with the tail of ``log``, when that process has exited,
    instead of waiting out the timeout for a port nobody will open.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the process meant to listen on {port} exited with {process.returncode}:\n"
                + log_tail(log)
            )
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s\n" + log_tail(log))


def postgres_available() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 5432)) == 0


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create a throw-away database on the local PostgreSQL and yield its URL."""
    from sqlalchemy import create_engine, text

    require(postgres_available(), "PostgreSQL is not running on 127.0.0.1:5432")
    name = f"cxr_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb, pg_ctl) that it may stop and start.

    Run as the ``postgres`` user when the tests run as root (initdb refuses root), in a folder
    under /tmp that user can reach; fsync off, loopback only, on a free port.
    """

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        require(bool(bins), "PostgreSQL's initdb is not installed")
        self.bin = bins[-1].parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
        self.data = self.root / "data"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {proc.stderr.strip()[-500:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "postgres.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class _Server:
    """A server process the tests start, stop and may start again on the same port."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class RedisServer(_Server):
    """A private redis-server on a free loopback port, which tests may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        require(shutil.which("redis-server") is not None, "redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, process=self.proc)

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


class StoreSCP(_Server):
    """dcmtk's storescp as a real result destination, writing what it receives to a folder."""

    def __init__(
        self, folder: Path, ae_title: str = "PACS", extra_args: tuple[str, ...] = ()
    ) -> None:
        require(shutil.which("storescp") is not None, "dcmtk storescp is not installed")
        self.folder = folder
        self.ae_title = ae_title
        self.extra_args = extra_args
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "/usr/bin/storescp",
                *self.extra_args,
                "-aet",
                self.ae_title,
                "-od",
                str(self.folder),
                str(self.port),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, process=self.proc)

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())
