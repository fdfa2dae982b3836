"""The embedded PostgreSQL's access: the password it is given and nothing else, older data directories converted.

Each test runs its own server on a new data directory, as a machine where it never ran would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodefleet.embedded.mosquitto import free_port
from nodefleet.embedded.postgres import POSTGRES_BIN_PATH, EmbeddedPostgres

pytestmark = pytest.mark.timeout(120)
SETTINGS = {"fsync": "off", "full_page_writes": "off"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its base is reset to 0700, which locks the server's own user out.
    base = Path(tempfile.mkdtemp(prefix="nodefleet-pg-access-"))
    yield base / "data"
    EmbeddedPostgres(base / "data", port=0).stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


def psql(server: EmbeddedPostgres, sql: str, *, password: str | None) -> subprocess.CompletedProcess[str]:
    """The wheel's psql over TCP, as any local user or process would try it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([str(POSTGRES_BIN_PATH / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                           "-w", "-tAc", sql, "postgres"], env=env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_only_the_password_gets_in(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, port=free_port(), password="right-one", settings=SETTINGS)
    server.start()
    without = psql(server, "SELECT 1", password=None)
    assert without.returncode != 0 and "password" in without.stderr
    wrong = psql(server, "SELECT 1", password="wrong-one")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    right = psql(server, "SELECT 1", password="right-one")
    assert right.returncode == 0 and right.stdout.strip() == "1", right.stderr
    stored = psql(server, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'", password="right-one")
    assert stored.stdout.startswith("SCRAM-SHA-256$")
    rules = [line.split() for line in (data_dir / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all(rule[-1] in ("scram-sha-256", "reject") or rule[:2] == ["local", "all"] for rule in rules)
    assert not any("trust" in rule for rule in rules)
    assert (data_dir / "pg_hba.conf").stat().st_mode & 0o077 == 0


def test_a_data_directory_that_trusted_everyone_is_converted_with_its_data(data_dir: Path) -> None:
    old = EmbeddedPostgres(data_dir, port=free_port(), password="unused", settings=SETTINGS)
    old._prepare()
    # What an earlier version made: every login trusted.
    old._run("initdb", "-D", str(data_dir), "--auth=trust", "--encoding=UTF8", "-U", "postgres", timeout=120)
    old._run("pg_ctl", "-D", str(data_dir), "-l", str(old.log_file), "-w", "-o", f"-h 127.0.0.1 -p {old.port} -k {data_dir}", "start")
    assert psql(old, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('from before')", password=None).returncode == 0
    old.stop()

    server = EmbeddedPostgres(data_dir, port=old.port, password="new-password", settings=SETTINGS)
    server.start()
    assert psql(server, "SELECT 1", password=None).returncode != 0
    kept = psql(server, "SELECT note FROM kept", password="new-password")
    assert kept.returncode == 0 and kept.stdout.strip() == "from before", kept.stderr


def test_a_lost_password_is_replaced_by_the_owner_of_the_data(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir, port=free_port(), password="first", settings=SETTINGS)
    first.start()
    first.create_database("nodefleet")
    first.stop()
    # The credentials file was deleted: `nodefleet up` made a new password; the data is still ours.
    second = EmbeddedPostgres(data_dir, port=first.port, password="second", settings=SETTINGS)
    second.start()
    assert psql(second, "SELECT 1", password="first").returncode != 0
    second.create_database("nodefleet")  # exists already: no error
    assert psql(second, "SELECT count(*) FROM pg_database WHERE datname = 'nodefleet'", password="second").stdout.strip() == "1"


def test_it_will_not_start_without_a_password(data_dir: Path) -> None:
    from nodefleet.embedded.postgres import PostgresError

    with pytest.raises(PostgresError, match="needs a password"):
        EmbeddedPostgres(data_dir, port=free_port()).start()
    assert not data_dir.exists()
