"""The service on the embedded amqtt broker (what ``nodefleet up`` runs): ingest and a resumed session."""

from __future__ import annotations



from nodefleet.contracts import Topics

from .helpers import make_settings, start, stop
from .process import Load
from .test_reliability import _all_stored


async def test_ingest_on_amqtt_with_held_acknowledgements(amqtt_broker, database, topics: Topics):
    settings = make_settings(amqtt_broker, database, topics)
    task = await start(settings)
    try:
        load = Load(amqtt_broker.url, topics, nodes=10)
        await load.run(100, rate=2000)  # 1,000 messages
        count, keys = await _all_stored(database, load, timeout=30)
        assert load.acked <= keys and count == len(keys) == 1000
    finally:
        await stop(task)

    # Published while the service is away: the broker queues them in its persistent session.
    load_away = Load(amqtt_broker.url, topics, nodes=10)
    await load_away.run(20, rate=2000, start_seq=100)
    task = await start(settings)
    try:
        count, keys = await _all_stored(database, load_away, timeout=30)
        assert load_away.acked <= keys, f"{len(load_away.acked - keys)} messages queued while away were lost"
        assert count == len(keys) == 1200
    finally:
        await stop(task)
