"""Bad input is rejected, counted, reported on the errors topic, and the service keeps going."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import wait_for

from nodefleet.contracts import MAX_PAYLOAD_BYTES, Topics
from nodefleet.wire import Inbound
from services.telemetry import schema
from services.telemetry.decode import Decoder

from .helpers import collecting_errors, start, stop

BAD = [
    ("bad_json", "telemetry", "n1", b"{not json"),
    ("bad_payload", "telemetry", "n1", b'{"v": 1, "seq": "seven"}'),
    ("bad_payload", "telemetry", "n1", b'{"v": 1, "seq": 1, "colour": "red"}'),
    ("bad_payload", "state", "n1", b'{"v": 1, "seq": 1, "relay": "MAYBE", "mode": "auto"}'),
    ("bad_payload", "status", "n1", b"dozing"),
    ("too_large", "log", "n1", b'{"v": 1, "seq": 1, "code": "x", "msg": "' + b"a" * MAX_PAYLOAD_BYTES + b'"}'),
    ("bad_topic", "telemetry", "Bad.Node", b'{"v": 1, "seq": 1}'),
]


def test_decoder_names_each_kind_of_bad_input(topics: Topics):
    decoder = Decoder(topics, retention_days=30, max_clock_ahead=86_400)
    now = time.time()
    batch = [Inbound(f"{topics.root}/{node}/{kind}", payload, now, 1, 1) for _, kind, node, payload in BAD]
    batch.append(Inbound(f"{topics.root}/n1/telemetry", b'{"v": 1, "seq": 1, "ts": 1000}', now, 1, 1))
    batch.append(Inbound(f"{topics.root}/n1/telemetry", b'{"v": 1, "seq": 1, "ts": %d}' % (now + 10 * 86_400), now, 1, 1))
    batch.append(Inbound(f"{topics.root}/n1/set/switch", b"ON", now, 1, 1))
    decoded = decoder.decode(batch, now=now)
    assert [r.code for r in decoded.rejected] == [code for code, *_ in BAD] + ["too_old", "clock_ahead", "bad_topic"]
    assert not decoded.telemetry and not decoded.states and not decoded.statuses


async def test_bad_input_is_counted_reported_and_survived(service, publisher, mosquitto, topics: Topics):
    async with collecting_errors(mosquitto, topics) as events:
        for _, kind, node, payload in BAD:
            # Bad node names cannot be built through Topics: that is the point of the test.
            await publisher.publish(f"{topics.root}/{node}/{kind}", payload, qos=1)
        good = {"v": 1, "seq": 1, "ts": time.time(), "readings": {"temperature": 21.5}}
        await publisher.publish(topics.telemetry("n1"), json.dumps(good), qos=1)
        await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM telemetry"), timeout=10)
        await wait_for(lambda: len(events) >= len(BAD), timeout=10)
        assert not service.task.done()
        assert sorted(e.code for e in events) == sorted(code for code, *_ in BAD)
        assert all(e.service == "telemetry" for e in events)
        assert {e.node for e in events if e.code != "bad_topic"} == {"n1"}

        # Rejected messages were acknowledged: the resumed session does not get them again.
        await stop(service.task)
        events.clear()
        again = await start(service.settings)
        try:
            await publisher.publish(topics.telemetry("n1"), json.dumps({**good, "seq": 2}), qos=1)
            await wait_for(lambda: service.db.fetchval("SELECT count(*) = 2 FROM telemetry"), timeout=10)
            await asyncio.sleep(0.3)
            assert events == []
        finally:
            await stop(again)


async def test_a_value_the_database_refuses_costs_only_its_own_message(service, publisher, topics: Topics):
    # JSON allows a NUL character; PostgreSQL text does not.
    refused = {"v": 1, "seq": 1, "code": "crash", "msg": "bad \u0000 byte"}
    good_log = {"v": 1, "seq": 2, "code": "crash", "msg": "fine"}
    await publisher.publish(topics.log("n2"), json.dumps(refused), qos=1)
    await publisher.publish(topics.log("n2"), json.dumps(good_log), qos=1)
    await publisher.publish(topics.telemetry("n2"), json.dumps({"v": 1, "seq": 1, "readings": {}}), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM telemetry"), timeout=10)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM device_logs"), timeout=10)
    assert [r["seq"] for r in await service.db.fetch("SELECT seq FROM device_logs")] == [2]


async def test_a_partition_dropped_behind_the_service_is_created_again(service, publisher, topics: Topics):
    now = time.time()
    await publisher.publish(topics.telemetry("p1"), json.dumps({"v": 1, "seq": 1, "ts": now, "readings": {}}), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM telemetry"), timeout=10)
    await service.db.execute(f"DROP TABLE {schema.partition_name(schema.day_of(now))}")
    await publisher.publish(topics.telemetry("p1"), json.dumps({"v": 1, "seq": 2, "ts": now, "readings": {}}), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) FROM telemetry"), timeout=10)
    assert [r["seq"] for r in await service.db.fetch("SELECT seq FROM telemetry")] == [2]


def test_cleared_retained_messages_are_a_removal_not_bad_input(topics: Topics):
    """The provisioner's removal empties status, state and info: the emptied status marks the node removed."""
    decoder = Decoder(topics, retention_days=30, max_clock_ahead=86_400)
    now = time.time()
    batch = [Inbound(f"{topics.root}/n1/{kind}", b"", now, 1, 1) for kind in ("state", "info", "status")]
    batch.append(Inbound(f"{topics.root}/n1/telemetry", b"", now, 1, 1))
    decoded = decoder.decode(batch, now=now)
    assert decoded.removals == [("n1", now)] and not decoded.seen
    assert [r.code for r in decoded.rejected] == ["bad_json"]  # an empty reading is still bad input
