"""The node under a strict per-device ACL (only its own prefix to publish, only its inbox to read)."""

from __future__ import annotations

from nodefleet.contracts import Topics

from broker_security import NODES, PREFIX
from .conftest import watching


class _As:
    """A broker seen with a user name and password in its URL."""

    def __init__(self, broker, user: str, password: str) -> None:
        self.url = f"mqtt://{user}:{password}@{broker.host}:{broker.port}"


async def test_node_under_a_strict_acl(make_node, secured_broker):
    topics = Topics(root=PREFIX)
    node = make_node("node-a")
    node.provision(broker=_As(secured_broker, "node-a", NODES["node-a"]).url, topic_prefix=topics.prefix("node-a"),
                   keepalive=5, max_backoff=1)
    async with watching(_As(secured_broker, "service", "service-pw"), topics, "node-a") as watch:
        await node.start()
        assert await watch.wait("status", lambda s: s == "online", timeout=15) == "online"
        ack = await watch.command("switch", {"state": "ON"})
        assert ack["status"] == "ok" and (await node.ctl())["relay"] == 1
        assert node.restarts == 0 and node.running
        # The ACL grants exactly the node's inbox, so no subscription is refused.
        assert watch.found("log", lambda e: e["code"] == "subscribe_refused") == []
        assert not watch.invalid, watch.invalid
