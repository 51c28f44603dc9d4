"""A throwaway PostgreSQL cluster for tests: Debian's binaries, a private port on 127.0.0.1, a temp dir.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system
user (created by Debian's package) and commands run through ``runuser``. ``fsync=off``: the data is
thrown away, and these tests check SQL behaviour, not the disk.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries are installed (``make test`` installs Debian's ``postgresql``)."""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise PostgresUnavailable(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Tests throw the data away: durability costs time and buys nothing.
TEST_SETTINGS = ("fsync=off", "full_page_writes=off")
#: What a production server keeps (fsync and full-page writes on), sized for a benchmark's connections.
DURABLE_SETTINGS = ("max_connections=200", "shared_buffers=256MB")


class ThrowawayPostgres:
    """initdb + postgres in a fresh directory of its own (pytest's 0700 temp root would keep the
    ``postgres`` user out); :meth:`stop` ends the server and deletes the directory."""

    def __init__(self, parent: Path | None = None, settings: Sequence[str] = TEST_SETTINGS):
        """``parent``: where the cluster's directory goes (default the system temp dir); ``settings``: the
        ``-c`` options (tests: no fsync; benchmarks pass :data:`DURABLE_SETTINGS`)."""
        self.directory = Path(tempfile.mkdtemp(prefix="postroom-pg-", dir=parent))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.settings = tuple(settings)
        self.process: subprocess.Popen | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self, timeout: float = 60) -> "ThrowawayPostgres":
        """Start the cluster."""
        if self._as_user:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        log = (self.directory / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [*self._as_user, _bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
             *(arg for setting in self.settings for arg in ("-c", setting))],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.directory / "postgres.log").read_text())
            time.sleep(0.1)
        return self

    def new_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, statement: str) -> None:
        """Run one statement as the superuser (e.g. to take a database away from its clients)."""
        self._run(_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-c", statement)

    def stop(self) -> None:
        """Fast shutdown through pg_ctl (signals to ``runuser`` are not passed on), then wait."""
        if self.process and self.process.poll() is None:
            subprocess.run([*self._as_user, _bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast"],
                           capture_output=True, timeout=60)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
