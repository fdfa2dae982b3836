"""Scheduler run events: stored once per (node, run_id, kind), bad ones rejected, answered newest first."""

from __future__ import annotations

import json
import time

import pytest
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import RunEventsQuery
from nodefleet.contracts.scheduling import RunEventRow
from nodefleet.fleet import RequestError
from nodefleet.wire import Inbound
from services.telemetry.app import ingest_filters, maintain
from services.telemetry.db import create_pool
from services.telemetry.decode import Decoder

from .helpers import collecting_errors, make_settings
from .test_queries_and_schema import _ask


def event(node: str, run_id: str, kind: str, ts: float, **extra) -> dict:
    return {"v": 1, "ts": ts, "node": node, "run_id": run_id, "rule": run_id.split("-")[0], "kind": kind,
            "action": "on", "start": ts - 12, "end": ts + 18, "instance": "sched-a", **extra}


def test_decoder_takes_run_events_and_rejects_bad_ones(topics: Topics):
    decoder = Decoder(topics, retention_days=30, max_clock_ahead=86_400)
    now = time.time()
    good = json.dumps(event("n1", "water-1", "miss", now, detail="node offline at the due time")).encode()
    bad = [
        (b"{not json", "bad_json"),
        (json.dumps(event("n1", "water-1", "exploded", now)).encode(), "bad_payload"),
        (json.dumps(event("Bad.Node", "water-1", "run", now)).encode(), "bad_payload"),
        (json.dumps({k: v for k, v in event("n1", "water-1", "run", now).items() if k != "run_id"}).encode(), "bad_payload"),
    ]
    batch = [Inbound(topics.scheduler_events(), good, now, 1, 1)]
    batch += [Inbound(topics.scheduler_events(), payload, now, 1, 1) for payload, _ in bad]
    decoded = decoder.decode(batch, now=now)
    assert [r.code for r in decoded.rejected] == [code for _, code in bad]
    assert all(r.topic == topics.scheduler_events() and r.node is None for r in decoded.rejected)
    [(node, stored, received)] = decoded.run_events
    assert (node, stored.kind, stored.detail, received) == ("n1", "miss", "node offline at the due time", now)
    assert decoded.seen == {}  # an event about a node is not the node being heard


def test_the_events_topic_is_subscribed_also_when_shared(mosquitto, database, topics: Topics):
    assert topics.scheduler_events() in ingest_filters(make_settings(mosquitto, database, topics))
    shared = ingest_filters(make_settings(mosquitto, database, topics, shared_group="ingest"))
    assert topics.shared("ingest", topics.scheduler_events()) in shared


async def test_run_events_are_stored_once_and_answered_newest_first(service, publisher, mosquitto, topics: Topics):
    async with collecting_errors(mosquitto, topics) as errors:
        now = time.time()
        backup = event("n1", "water-1", "backup", now - 60, detail="state did not follow within 10 s", sent=now - 59.9)
        # Two instances publish the same backup; only the one that won the claim sends it, but both may report.
        second = {**backup, "instance": "sched-b", "ts": now - 59}
        topic = topics.scheduler_events()
        for body in (backup, second, event("n1", "water-2", "run", now - 30), event("n2", "water-1", "miss", now)):
            await publisher.publish(topic, json.dumps(body), qos=1)
        await publisher.publish(topic, b"{not json", qos=1)
        await publisher.publish(topic, json.dumps(event("n1", "water-3", "toggled", now)), qos=1)
        await wait_for(lambda: service.db.fetchval("SELECT count(*) = 3 FROM run_events"), timeout=10)
        await wait_for(lambda: len(errors) >= 2, timeout=10)
        assert sorted(e.code for e in errors) == ["bad_json", "bad_payload"]
        assert all(e.topic == topic and e.service == "telemetry" for e in errors)

        # A later copy (another batch: a redelivery) is not stored again either.
        await publisher.publish(topic, json.dumps(second), qos=1)
        await publisher.publish(topic, json.dumps(event("n3", "water-1", "skipped", now)), qos=1)
        await wait_for(lambda: service.db.fetchval("SELECT count(*) = 4 FROM run_events"), timeout=10)
        assert await service.db.fetchval("SELECT count(*) FROM run_events WHERE node = 'n1' AND kind = 'backup'") == 1
        assert not service.task.done()

    rows = [RunEventRow.model_validate(row) for row in await _ask(mosquitto, topics, "run_events", RunEventsQuery(node="n1"))]
    assert [(r.run_id, r.kind) for r in rows] == [("water-2", "run"), ("water-1", "backup")]
    stored = rows[1]
    assert stored.instance == "sched-a" and stored.detail == backup["detail"]
    assert stored.ts == pytest.approx(backup["ts"], abs=1e-5) and stored.sent == pytest.approx(backup["sent"], abs=1e-5)
    assert (stored.start, stored.end) == (pytest.approx(backup["start"], abs=1e-5), pytest.approx(backup["end"], abs=1e-5))
    assert now - 5 < stored.received < time.time() + 1 and rows[0].sent is None
    limited = await _ask(mosquitto, topics, "run_events", RunEventsQuery(node="n1", limit=1))
    assert [row["run_id"] for row in limited] == ["water-2"]
    assert await _ask(mosquitto, topics, "run_events", RunEventsQuery(node="nobody")) == []
    with pytest.raises(RequestError):
        await _ask(mosquitto, topics, "run_events", {"node": "n1", "limit": 0})


async def test_run_events_expire_with_the_logs(service, publisher, mosquitto, database, topics: Topics):
    now = time.time()
    for run_id, age_days in (("water-1", 10), ("water-2", 1)):
        await publisher.publish(topics.scheduler_events(), json.dumps(event("r1", run_id, "run", now - age_days * 86_400)), qos=1)
    await wait_for(lambda: service.db.fetchval("SELECT count(*) = 2 FROM run_events"), timeout=10)
    pool = await create_pool(database)
    try:
        await maintain(pool, make_settings(mosquitto, database, topics, log_retention_days=5))
    finally:
        await pool.close()
    assert [r["run_id"] for r in await service.db.fetch("SELECT run_id FROM run_events")] == ["water-2"]
