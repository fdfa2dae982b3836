"""Pure parts of the CLI: times, durations, output formats, the data directory, the stored broker logins."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from nodefleet.cli.options import build_settings
from nodefleet.cli.output import Column, emit
from nodefleet.cli.times import iso_time, parse_duration, parse_time, relative
from nodefleet.paths import (
    CREDENTIALS_FILE,
    OPERATOR,
    CredentialsFileError,
    LocalCredentials,
    default_data_dir,
)
from nodefleet.wire import BrokerAddress

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("2w", 1209600), ("1h30m", 5400), ("1.5h", 5400),
    ("500ms", 0.5), (" 10 m ", 600),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_time(text, now=NOW) == NOW - seconds


@pytest.mark.parametrize("text", ["", "1", "1x", "h", "1h-2m", "yesterday"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_times() -> None:
    assert parse_time("now", now=NOW) == NOW
    assert parse_time("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time("2026-01-01T01:00:00+01:00") == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_time("2026-01-01T00:00") == datetime(2026, 1, 1).timestamp()  # naive means local time
    with pytest.raises(ValueError, match="30s, 15m, 1h, 7d"):
        parse_time("last tuesday")


def test_relative_times() -> None:
    assert relative(None) == "never"
    assert relative(NOW - 0.4, now=NOW) == "just now"
    assert relative(NOW - 12, now=NOW) == "12 s ago"
    assert relative(NOW - 125, now=NOW) == "2 min ago"
    assert relative(NOW - 3 * 3600 - 5, now=NOW) == "3 h ago"
    assert relative(NOW - 2 * 86400, now=NOW) == "2 d ago"
    assert relative(NOW + 30, now=NOW) == "30 s from now"
    assert iso_time(0) == "1970-01-01T00:00:00.000Z" and iso_time(None) == ""


def test_output_formats(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"node": "a", "seen": 0.0, "note": None}, {"node": "b,c", "seen": 1.5, "note": "x"}]
    columns = [Column(key="node", title="node"), Column(key="seen", title="seen", human=lambda v: "human",
                                                         machine=iso_time), Column(key="note", title="note")]
    emit(rows, columns, "csv")
    assert capsys.readouterr().out == 'node,seen,note\na,1970-01-01T00:00:00.000Z,\n"b,c",1970-01-01T00:00:01.500Z,x\n'
    emit(rows, columns, "json")
    assert json.loads(capsys.readouterr().out) == rows
    emit(rows, columns, "table", title="2 rows")
    table = capsys.readouterr().out
    assert "2 rows" in table and "human" in table and "b,c" in table
    emit([], columns, "table")
    assert capsys.readouterr().out == ""


def test_settings_from_options_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEFLEET_MQTT_URL", "mqtt://broker.lan:1884")
    monkeypatch.setenv("NODEFLEET_TOPIC_ROOT", "house")
    from_env = build_settings(broker=None, topic_root=None, fleet_root=None)
    assert from_env.mqtt_url == "mqtt://broker.lan:1884" and from_env.topic_root == "house" and from_env.fleet_root == "fleet"
    given = build_settings(broker="mqtt://127.0.0.1:1", topic_root="flat", fleet_root="ops")
    assert (given.mqtt_url, given.topic_root, given.fleet_root) == ("mqtt://127.0.0.1:1", "flat", "ops")
    with pytest.raises(click.UsageError, match="mqtt://host:port"):
        build_settings(broker="http://x", topic_root=None, fleet_root=None)
    with pytest.raises(click.UsageError, match="invalid topic root"):
        build_settings(broker=None, topic_root="home/#", fleet_root=None)


def test_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NODEFLEET_DATA_DIR", str(tmp_path / "chosen"))
    assert default_data_dir() == tmp_path / "chosen"
    monkeypatch.delenv("NODEFLEET_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "nodefleet"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_data_dir() == tmp_path / ".local" / "share" / "nodefleet"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir() == Path("/var/lib/nodefleet")


def test_broker_logins_are_made_once_and_kept_private(tmp_path: Path) -> None:
    made = LocalCredentials.ensure(tmp_path, ["provisioner", OPERATOR])
    made.listening_on("127.0.0.1", 1884)
    made.save()
    path = tmp_path / CREDENTIALS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(set(made.passwords.values())) == 2 and all(len(secret) >= 24 for secret in made.passwords.values())
    again = LocalCredentials.ensure(tmp_path, ["provisioner", OPERATOR, "ota"])  # a new service gets a password
    assert {k: again.passwords[k] for k in made.passwords} == made.passwords and "ota" in again.passwords
    again.save()
    assert LocalCredentials.read(tmp_path).passwords == again.passwords  # type: ignore[union-attr]
    assert path.stat().st_mode & 0o777 == 0o600
    url = BrokerAddress.parse(again.url(OPERATOR, "127.0.0.1", 1884))
    assert (url.username, url.password, url.port) == (OPERATOR, again.passwords[OPERATOR], 1884)
    # Only the broker they were made for: its port, on this machine.
    assert again.serves("127.0.0.1", 1884) and again.serves("localhost", 1884)
    assert not again.serves("127.0.0.1", 1883) and not again.serves("broker.lan", 1884)
    again.listening_on("", None)  # stopped, or running open
    assert not again.serves("127.0.0.1", 1884)
    path.write_text("{not json")
    with pytest.raises(CredentialsFileError, match="delete the file"):
        LocalCredentials.read(tmp_path)


def test_the_ota_master_key_is_made_once_and_kept_with_the_logins(tmp_path: Path) -> None:
    data = tmp_path / "new"  # a first run: no data directory yet
    key = LocalCredentials.for_ota(data)
    assert len(bytes.fromhex(key)) == 32 and (data / CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600
    assert LocalCredentials.for_ota(data) == key
    # Whatever else is written to the file later keeps it.
    logins = LocalCredentials.ensure(data, [OPERATOR])
    logins.listening_on("127.0.0.1", 1884)
    logins.save()
    assert LocalCredentials.for_database(data) and LocalCredentials.read(data).ota_master == key  # type: ignore[union-attr]
    # A file written before OTA keys gets one and keeps its passwords.
    old = tmp_path / "old"
    old.mkdir()
    (old / CREDENTIALS_FILE).write_text(json.dumps({"passwords": {OPERATOR: "pw"}, "listener": None}))
    assert LocalCredentials.for_ota(old) != key and LocalCredentials.read(old).passwords == {OPERATOR: "pw"}  # type: ignore[union-attr]
    (old / CREDENTIALS_FILE).write_text(json.dumps({"passwords": {}, "ota_master": "nope"}))
    with pytest.raises(CredentialsFileError, match="ota_master"):
        LocalCredentials.read(old)


def test_commands_log_in_to_the_local_broker_on_their_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NODEFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NODEFLEET_MQTT_URL", raising=False)
    assert build_settings(broker=None, topic_root=None, fleet_root=None).mqtt_url == "mqtt://127.0.0.1:1883"
    stored = LocalCredentials.ensure(tmp_path, [OPERATOR])
    stored.listening_on("0.0.0.0", 1883)
    stored.save()
    login = BrokerAddress.parse(build_settings(broker=None, topic_root=None, fleet_root=None).mqtt_url)
    assert (login.username, login.password, login.host) == (OPERATOR, stored.passwords[OPERATOR], "127.0.0.1")
    monkeypatch.setenv("NODEFLEET_MQTT_URL", "mqtt://localhost:1883")
    assert BrokerAddress.parse(build_settings(broker=None, topic_root=None, fleet_root=None).mqtt_url).username == OPERATOR
    # A login given in the URL wins; another broker gets no password of ours.
    given = build_settings(broker="mqtt://me:secret@127.0.0.1:1883", topic_root=None, fleet_root=None)
    assert given.mqtt_url == "mqtt://me:secret@127.0.0.1:1883"
    assert build_settings(broker="mqtt://127.0.0.1:1999", topic_root=None, fleet_root=None).mqtt_url == "mqtt://127.0.0.1:1999"
    assert build_settings(broker="mqtt://broker.lan:1883", topic_root=None, fleet_root=None).mqtt_url == "mqtt://broker.lan:1883"
    # An unreadable file is reported, and the command goes on without it.
    (tmp_path / CREDENTIALS_FILE).write_text("[]")
    assert build_settings(broker=None, topic_root=None, fleet_root=None).mqtt_url == "mqtt://localhost:1883"
    assert "unreadable" in capsys.readouterr().err
