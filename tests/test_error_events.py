"""Rate-limited error events on a real broker: a storm is summarised when its window closes."""

from __future__ import annotations

import asyncio
import time
import uuid

from background import in_background

from nodefleet import wire
from nodefleet.contracts import ErrorEvent
from nodefleet.fleet import ErrorReporter


async def test_a_storm_is_summarised_when_its_window_closes(mosquitto, topics):
    reporter = ErrorReporter("test", topics, burst=3, window=1.0)
    address = wire.BrokerAddress.parse(mosquitto.url)
    events: list[tuple[float, ErrorEvent]] = []

    async with wire.Client(address, client_id=f"errors-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe(topics.errors(), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                events.append((time.monotonic(), ErrorEvent.model_validate_json(message.payload)))  # type: ignore[arg-type]

        async with in_background(collect()), in_background(reporter.run(client)):
            began = time.monotonic()
            for i in range(20):
                reporter.report("bad_input", f"storm {i}", node="n1")
            reporter.report("other", "one of another code")
            async with asyncio.timeout(5):
                while not any(e.suppressed for _, e in events):
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # nothing more should come
    storm = [e for _, e in events if e.code == "bad_input"]
    assert [e.detail for e in storm[:3]] == ["storm 0", "storm 1", "storm 2"]
    assert all(e.suppressed == 0 for e in storm[:3])
    # One summary, once the window closed (not with a later event), counting the 17 left out, quoting the last.
    [(arrived, summary)] = [(t, e) for t, e in events if e.suppressed]
    assert summary.code == "bad_input" and summary.suppressed == 17 and summary.node == "n1"
    assert "17 more bad_input" in summary.detail and "storm 19" in summary.detail
    assert 0.9 <= arrived - began < 3.0
    assert [e.detail for _, e in events if e.code == "other"] == ["one of another code"]
    assert reporter.counts == {"bad_input": 20, "other": 1}
    # A quiet window after the summary: nothing left out, so the next event starts a fresh count.
    assert reporter.close_windows() is None
