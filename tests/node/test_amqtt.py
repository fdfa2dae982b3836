"""The node on the embedded broker of `nodefleet up` (amqtt, our embedding) as well as on Mosquitto."""

from __future__ import annotations

from nodefleet.contracts.topics import NodeTopic

from .conftest import watching


async def test_node_works_on_the_embedded_broker(make_node, topics, amqtt_broker):
    node = make_node()
    node.provision(broker=amqtt_broker.url, topic_prefix=topics.prefix("node-1"), keepalive=5, max_backoff=1)
    async with watching(amqtt_broker, topics, "node-1") as watch:
        await node.start()
        assert await watch.wait("status", lambda s: s == "online", timeout=15) == "online"
        ack = await watch.command("switch", {"state": "ON", "for": 60})
        assert ack["status"] == "ok" and (await node.ctl())["relay"] == 1
        await watch.retain(NodeTopic.SCHEDULE, {"v": 1, "version": 1, "rules": [{"id": "am", "at": "06:00", "duration": 60}]})
        await watch.command("logic", {"enabled": True})
        assert node.read("schedule.json")["rules"][0]["id"] == "am"

        # A restart: offline (last will), then online again with its retained schedule, relay OFF at power-on.
        mark = watch.mark()
        assert (await watch.command("restart", {}))["status"] == "ok"
        await watch.wait("status", lambda s: s == "offline", since=mark, timeout=15)
        await watch.wait("status", lambda s: s == "online", since=mark, timeout=15)
        state = await watch.wait("state", lambda s: s["relay"] == "OFF", since=mark)
        assert state["mode"] == "auto" and node.restarts == 1
        assert not watch.invalid, watch.invalid
