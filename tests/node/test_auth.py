"""Per-device credentials: the node logs in with them; refused credentials are logged and retried."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import pytest

from nodefleet.embedded.mosquitto import Mosquitto

from .conftest import watching


@pytest.fixture
def secured_broker():
    folder = Path(tempfile.mkdtemp(prefix="nodefleet-auth-"))
    folder.chmod(0o755)  # Mosquitto may drop root and read the file as its own user
    passwords = folder / "passwords"
    for user, password in (("node-1", "s3cret"), ("watcher", "w")):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "node-1" else []), str(passwords), user, password],
                       check=True, capture_output=True)
    passwords.chmod(0o644)
    broker = Mosquitto(extra_config=f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    yield broker
    broker.stop()


async def test_node_logs_in_with_its_credentials(make_node, topics, secured_broker):
    broker = secured_broker
    node = make_node()
    node.provision(broker=f"mqtt://node-1:wrong@{broker.host}:{broker.port}", topic_prefix=topics.prefix("node-1"),
                   keepalive=5, max_backoff=1)
    await node.start()
    for _ in range(100):
        saved = node.read("errlog.json")
        if saved and any(e["code"] == "mqtt_connect" for e in saved["items"]):
            break
        await asyncio.sleep(0.1)
    refused = [e for e in node.read("errlog.json")["items"] if e["code"] == "mqtt_connect"]
    assert len(refused) == 1 and "broker refused" in refused[0]["msg"] and "password" in refused[0]["msg"]
    # The LED task looks at the link on its own period: the refusal can be logged before it has.
    for _ in range(40):
        if (await node.ctl())["led"] == "no_broker":
            break
        await asyncio.sleep(0.05)
    assert (await node.ctl())["led"] == "no_broker"

    await node.stop()
    node.provision(broker=f"mqtt://node-1:s3cret@{broker.host}:{broker.port}", topic_prefix=topics.prefix("node-1"),
                   keepalive=5, max_backoff=1)
    async with watching(_Url(broker, "watcher:w"), topics, "node-1") as watch:
        await node.start()
        assert await watch.wait("status", lambda s: s == "online", timeout=15) == "online"
        # The refusal from the previous boot reaches the log topic now.
        entry = await watch.wait("log", lambda e: e["code"] == "mqtt_connect")
        assert "broker refused" in entry["msg"]
        assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
        assert not watch.invalid, watch.invalid


class _Url:
    """The broker seen with a user name and password in its URL."""

    def __init__(self, broker: Mosquitto, credentials: str) -> None:
        self.url = f"mqtt://{credentials}@{broker.host}:{broker.port}"
