"""``nodefleet ota release|releases|rollout|status|history`` end to end: the CLI as a subprocess, the ota service
running on a real broker and PostgreSQL, test peers as the nodes."""

from __future__ import annotations

import json

from nodefleet.ota_release import write
from tests.ota.conftest import fleet, release_140, running, settings_for  # noqa: F401 - release_140 is a fixture

from .helpers import cli_env, nodefleet


async def test_ota_commands_against_the_running_service(mosquitto, database, topics, release_140, tmp_path):  # noqa: F811
    env = cli_env(topics, NODEFLEET_MQTT_URL=mosquitto.url, NODEFLEET_DATA_DIR=str(tmp_path / "none"))
    path = tmp_path / "nodefleet-1.4.0.nfr"
    write(release_140, path)
    async with running(settings_for(mosquitto.url, database, topics)), \
            fleet(mosquitto.url, topics, ["c1", "c2", "c3"], peers=["c1", "c2"]):
        done = await nodefleet("ota", "release", str(path), env=env)
        assert done.code == 0, done.stderr
        assert "release 1.4.0 kept" in done.stdout and "nodefleet ota rollout start 1.4.0" in done.stderr
        again = await nodefleet("ota", "release", str(path), env=env)
        assert again.code != 0 and "already kept" in again.stderr

        damaged = tmp_path / "damaged.nfr"
        data = bytearray(path.read_bytes())
        data[-10] ^= 1
        damaged.write_bytes(bytes(data))
        bad = await nodefleet("ota", "release", str(damaged), env=env)
        assert bad.code != 0 and "does not match" in bad.stderr

        listed = await nodefleet("ota", "releases", "--format", "json", env=env)
        assert [r["version"] for r in json.loads(listed.stdout)] == ["1.4.0"]

        unknown = await nodefleet("ota", "rollout", "start", "1.4.0", "--to", "c1,ghost", env=env)
        assert unknown.code != 0 and "unknown node(s) ghost" in unknown.stderr
        started = await nodefleet("ota", "rollout", "start", "1.4.0", "--to", "all", "--canary", "1", "--stages",
                                  "50%,100%", "--max-failures", "34%", "--min-sample", "2", "--id", "cli1", env=env)
        assert started.code == 0, started.stderr
        assert "rollout cli1 of 1.4.0: 3 nodes" in started.stdout

        status = await nodefleet("ota", "status", "cli1", "--json", env=env)
        [view] = json.loads(status.stdout)
        assert view["id"] == "cli1" and len(view["targets"]) == 3

        # --watch without a terminal prints the plain table once.
        table = await nodefleet("ota", "status", "cli1", "--watch", env=env)
        assert table.code == 0 and "rollout cli1" in table.stdout and "c3" in table.stdout

        paused = await nodefleet("ota", "rollout", "pause", "cli1", env=env)
        assert paused.code == 0 and "cli1: paused" in paused.stdout, paused.stderr
        resumed = await nodefleet("ota", "rollout", "resume", "cli1", env=env)
        assert resumed.code == 0 and "cli1: running" in resumed.stdout
        aborted = await nodefleet("ota", "rollout", "abort", "cli1", env=env)
        assert aborted.code == 0 and "cli1: aborted" in aborted.stdout
        twice = await nodefleet("ota", "rollout", "abort", "cli1", env=env)
        assert twice.code != 0 and "already aborted" in twice.stderr

        history = await nodefleet("ota", "history", "c3", "--format", "json", env=env)
        assert history.code == 0 and json.loads(history.stdout)[-1]["state"] == "queued"
        empty = await nodefleet("ota", "status", env=env)
        assert empty.code == 0 and "no open rollout" in empty.stderr


async def test_ota_commands_say_what_to_do_without_a_service(mosquitto, topics, tmp_path):
    env = cli_env(topics, NODEFLEET_MQTT_URL=mosquitto.url, NODEFLEET_DATA_DIR=str(tmp_path / "none"))
    done = await nodefleet("ota", "releases", env=env)
    assert done.code != 0 and "no answer from the ota service" in done.stderr and "nodefleet up" in done.stderr
    usage = await nodefleet("ota", "rollout", "start", "1.4.0", env=env)
    assert usage.code == 2 and "--to all" in usage.stderr
