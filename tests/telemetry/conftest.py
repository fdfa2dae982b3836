"""Fixtures of the telemetry tests: the service running in-process on the session's Mosquitto."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from nodefleet.wire import BrokerAddress, Client

from .helpers import Running, make_settings, start, stop


@pytest.fixture
async def service(mosquitto, database, topics) -> AsyncIterator[Running]:
    settings = make_settings(mosquitto, database, topics)
    task = await start(settings)
    db = await asyncpg.connect(database)
    try:
        yield Running(settings, task, db)
    finally:
        await db.close()
        await stop(task)


@pytest.fixture
async def publisher(mosquitto) -> AsyncIterator:
    async with Client(BrokerAddress.parse(mosquitto.url), client_id=f"pub-{uuid.uuid4().hex[:8]}") as mqtt:
        yield mqtt
