"""Per-node rate limits (seed 003: 100 messages in 60 s): a flooding node's excess is counted, reported once and
not stored; the other nodes are stored as ever; a backlog replayed after an outage is not cut."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.ratelimit import RateLimits
from nodefleet.wire import Inbound
from services.telemetry.decode import Decoder

from .helpers import collecting_errors, make_settings, start, stop


def test_a_bucket_takes_its_capacity_then_its_rate():
    limits = RateLimits(100, 60.0)
    assert all(limits.allow("a", 1000.0) for _ in range(100))
    assert not limits.allow("a", 1000.0)
    assert limits.allow("b", 1000.0)  # every node has its own bucket
    assert limits.allow("a", 1000.6)  # 100 / 60 s: a token every 0.6 s
    assert not limits.allow("a", 1000.6)
    assert limits.dropped == 2 and limits.dropped_by("a") == 2


def _telemetry(topics: Topics, node: str, seq: int, ts: float | None, received: float) -> Inbound:
    body = json.dumps({"v": 1, "seq": seq, "ts": ts, "readings": {"temperature": 20.5}}).encode()
    return Inbound(topics.telemetry(node), body, received, 1, seq + 1)


def test_a_flood_is_cut_and_reported_once_but_a_replayed_backlog_is_not(topics: Topics):
    decoder = Decoder(topics, retention_days=30, max_clock_ahead=86_400, limits=RateLimits(100, 60.0))
    now = time.time()
    # 300 messages sent within the same second: 100 pass, 200 are dropped, and only the first drop is reported.
    flood = decoder.decode([_telemetry(topics, "flood", seq, now, now) for seq in range(300)], now=now)
    assert len(flood.telemetry) == 100
    assert [r.code for r in flood.rejected] == ["rate_limited"] * 200
    assert sum(r.reported for r in flood.rejected) == 1 and flood.rejected[0].reported
    # A node that sent one message every 10 s for an hour while the service was down: all arrive at once, all kept.
    backlog = [_telemetry(topics, "calm", seq, now - 3600 + 10 * seq, now) for seq in range(360)]
    assert len(decoder.decode(backlog, now=now).telemetry) == 360
    # Status is not limited: the broker publishes the last will for the node.
    status = Inbound(topics.status("flood"), b"offline", now, 1, 1)
    assert [s[:2] for s in decoder.decode([status], now=now).statuses] == [("flood", False)]


async def test_one_flooding_node_is_throttled_while_the_others_are_stored(mosquitto, database, topics: Topics,
                                                                         publisher):
    settings = make_settings(mosquitto, database, topics, node_limit=50, node_limit_window=60.0)
    task = await start(settings)
    db = await asyncpg.connect(database)
    try:
        async with collecting_errors(mosquitto, topics) as events:
            now = time.time()

            async def node(name: str, count: int) -> None:
                for seq in range(count):
                    body = {"v": 1, "seq": seq, "ts": now + seq / 1000, "readings": {"temperature": 21.0}}
                    await publisher.publish(topics.telemetry(name), json.dumps(body), qos=1)

            await asyncio.gather(node("flooder", 600), *(node(f"calm-{i}", 5) for i in range(20)))
            await wait_for(lambda: db.fetchval("SELECT count(*) = 100 FROM telemetry WHERE node LIKE 'calm-%'"),
                           timeout=15)
            await wait_for(lambda: any(e.code == "rate_limited" for e in events), timeout=10)
            await asyncio.sleep(0.5)  # anything still on its way is stored or dropped by now
            stored = await db.fetchval("SELECT count(*) FROM telemetry WHERE node = 'flooder'")
            # 50 at once, then 50 / 60 s on the device's clock: its 600 messages span 0.6 s of it.
            assert stored == 50
            limited = [e for e in events if e.code == "rate_limited"]
            assert len(limited) == 1 and limited[0].node == "flooder" and "over 50 messages in 60 s" in limited[0].detail
            assert not task.done()
    finally:
        await db.close()
        await stop(task)
