"""`nodefleet up` on a machine where it never ran: no system user for PostgreSQL, no data directory, no home.

Earlier runs leave users and directories behind on a test machine, so each
first-run path makes its own: a system user name nobody has used, an ordinary
user with an empty home, and removes them afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.paths import LocalCredentials

from .helpers import UpProcess, cli_env, database_url, postmaster_pid

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it creates and removes operating-system users")


def _remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True, timeout=30)
    subprocess.run(["groupdel", name], capture_output=True, timeout=30)  # left behind only if userdel kept it


@pytest.fixture
def unused_user_name() -> Iterator[str]:
    name = f"nf_{uuid.uuid4().hex[:10]}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    yield name
    _remove_user(name)


@pytest.fixture
def ordinary_user(postgres: EmbeddedPostgres) -> Iterator[tuple[int, Path]]:
    """(uid, empty home) of a person without root: a new user as root, else ourselves with a new home.

    ``postgres`` (the session's server) has already given other users search permission on the way
    to the wheel's binaries, which is also the way to this Python when it lives under /root.
    """
    base = Path(tempfile.mkdtemp(prefix="nodefleet-home-"))
    base.chmod(0o755)
    home = base / "home"
    if os.geteuid() != 0:
        home.mkdir()
        yield os.geteuid(), home
        shutil.rmtree(base, ignore_errors=True)
        return
    name = f"nf_{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
                   check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name).pw_uid, home
    finally:
        _remove_user(name)
        shutil.rmtree(base, ignore_errors=True)


def _env(topics: Topics, **extra: str) -> dict[str, str]:
    env = cli_env(topics, NODEFLEET_TELEMETRY_CLIENT_ID=f"telemetry-{uuid.uuid4().hex[:8]}", **extra)
    for key in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        env.pop(key, None)
    # Started in the new home, not in this checkout: import this checkout's code, not whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def _runs_and_stops(up: UpProcess, data_dir: Path, db_port: int) -> int:
    """Banner, a database that takes its password, then a clean stop on Ctrl-C; the server's uid."""
    try:
        banner = await up.wait_ready()
        assert banner["data"] == str(data_dir)
        connection = await asyncpg.connect(database_url(data_dir, db_port))
        assert await connection.fetchval("SELECT current_user") == "postgres"
        await connection.close()
        server = postmaster_pid(data_dir)
        assert server is not None
        owner = os.stat(f"/proc/{server}").st_uid
        assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]
        assert "Traceback" not in up.stderr, up.stderr[-3000:]
        assert postmaster_pid(data_dir) is None
        return owner
    finally:
        up.kill()
        if postmaster_pid(data_dir) is not None:
            EmbeddedPostgres(data_dir / "postgres", port=0).stop("immediate")


@as_root
async def test_first_up_as_root_creates_the_system_user(unused_user_name: str, tmp_path: Path, topics: Topics) -> None:
    base = Path(tempfile.mkdtemp(prefix="nodefleet-first-"))
    data_dir = base / "data"
    db_port = free_port()
    try:
        up = UpProcess(["--mqtt-port", str(free_port()), "--db-port", str(db_port), "--data-dir", str(data_dir)],
                       env=_env(topics, NODEFLEET_PG_SYSTEM_USER=unused_user_name), workdir=tmp_path / "logs")
        owner = await _runs_and_stops(up, data_dir, db_port)
        made = pwd.getpwnam(unused_user_name)
        assert owner == made.pw_uid and made.pw_uid < 1000 and made.pw_shell.endswith("nologin")
        assert (data_dir / "postgres").stat().st_uid == made.pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_first_up_as_an_ordinary_user_in_an_empty_home(ordinary_user: tuple[int, Path], tmp_path: Path,
                                                               topics: Topics) -> None:
    uid, home = ordinary_user
    db_port = free_port()
    env = _env(topics, HOME=str(home), USER=pwd.getpwuid(uid).pw_name, LOGNAME=pwd.getpwuid(uid).pw_name)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs").chmod(0o777)
    up = UpProcess(["--mqtt-port", str(free_port()), "--db-port", str(db_port)], env=env, workdir=tmp_path / "logs",
                   uid=uid)
    # No --data-dir: the default under the new home, made on the way.
    data_dir = home / ".local" / "share" / "nodefleet"
    assert await _runs_and_stops(up, data_dir, db_port) == uid
    assert (data_dir / "broker-credentials.json").stat().st_uid == uid
    # The OTA master key is made on the first run, in the same file, readable by this user alone.
    kept = LocalCredentials.read(data_dir)
    assert kept is not None and kept.ota_master is not None and len(bytes.fromhex(kept.ota_master)) == 32
    assert (data_dir / "broker-credentials.json").stat().st_mode & 0o777 == 0o600
