"""Commands sent while the node is briefly offline: held by the broker (persistent session), acked when it
returns, ``expired`` when they came too late. On Mosquitto and on the embedded amqtt."""

from __future__ import annotations

import asyncio
import time

from nodefleet.contracts import Ack

from .conftest import online


async def test_commands_sent_during_a_blip_are_answered_when_the_node_returns(broker, topics, make_node):
    node = make_node("blip-1", broker=broker)
    async with online(node, broker, topics) as watch:
        mark = watch.mark()
        await node.ctl("wifi 0")
        await watch.wait("status", lambda s: s == "offline", since=mark, timeout=15)

        now = time.time()  # the clock the node runs on too (the sim's clock is this machine's)
        await watch.send("switch", {"state": "ON", "id": "fresh", "sent": now})
        await watch.send("logic", {"enabled": True, "id": "plain"})  # no timestamps, a short outage
        await watch.send("switch", {"state": "OFF", "id": "late", "sent": now - 120})
        await watch.send("stop", {"id": "soon", "expires": now + 1})
        # "soon" is past its expiry before the node is back. The node's clock counts whole seconds (int), so
        # its time passes a fractional deadline up to a second late: wait out that second too.
        await asyncio.sleep(2.5)

        mark = watch.mark()
        await node.ctl("wifi 1")
        acks = {}
        for cid in ("fresh", "plain", "late", "soon"):
            acks[cid] = Ack.model_validate(await watch.wait("ack", lambda a, c=cid: a["id"] == c, since=mark,
                                                            timeout=15))
        assert acks["fresh"].status == "ok" and acks["plain"].status == "ok"
        assert acks["late"].status == "expired" and "not executed" in (acks["late"].error or "")
        assert acks["soon"].status == "expired"
        board = await node.ctl()
        assert board["relay"] == 1  # ON ran; the late OFF and the expired stop did not
        assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"


async def test_across_a_power_cut_only_commands_that_tell_their_age_run(broker, topics, make_node):
    node = make_node("blip-2", broker=broker)
    async with online(node, broker, topics) as watch:
        mark = watch.mark()
        await node.kill()
        await watch.wait("status", lambda s: s == "offline", since=mark, timeout=15)
        await watch.send("switch", {"state": "ON", "id": "told", "sent": time.time()})
        # Without sent or expires nobody can tell how long the broker held it: not executed.
        await watch.send("switch", {"state": "OFF", "id": "untold"})
        mark = watch.mark()
        await node.start()
        told = await watch.wait("ack", lambda a: a["id"] == "told", since=mark, timeout=15)
        untold = await watch.wait("ack", lambda a: a["id"] == "untold", since=mark, timeout=15)
        assert told["status"] == "ok" and untold["status"] == "expired"
        assert (await node.ctl())["relay"] == 1
        # Once the session is resumed, commands run as ever.
        assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"
