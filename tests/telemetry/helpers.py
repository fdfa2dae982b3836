"""Helpers of the telemetry tests: build settings, start and stop the service in-process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from background import in_background

from nodefleet.contracts import ErrorEvent, Topics
from nodefleet.wire import BrokerAddress, Client
from services.telemetry.app import serve
from services.telemetry.settings import TelemetrySettings


@dataclass
class Running:
    settings: TelemetrySettings
    task: asyncio.Task[None]
    db: asyncpg.Connection


def make_settings(mosquitto, database: str, topics: Topics, **overrides) -> TelemetrySettings:
    values = dict(
        mqtt_url=mosquitto.url, database_url=database, topic_root=topics.root, fleet_root=topics.fleet,
        client_id=f"telemetry-{uuid.uuid4().hex[:8]}", instance="test", flush_interval=0.02,
        maintenance_interval=3600, log_format="console",
        node_limit=0,  # the load generators send hundreds a second per node; test_node_limits sets one
    )
    values.update(overrides)
    return TelemetrySettings(**values)


async def start(settings: TelemetrySettings, timeout: float = 20.0) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        task.cancel()
        if task.done():
            task.result()
        raise AssertionError("telemetry service did not become ready")
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


@contextlib.asynccontextmanager
async def collecting_errors(mosquitto, topics: Topics) -> AsyncIterator[list[ErrorEvent]]:
    """Every ErrorEvent published on the errors topic while the block runs, in a list that fills as they come."""
    events: list[ErrorEvent] = []
    async with Client(BrokerAddress.parse(mosquitto.url), client_id=f"err-{uuid.uuid4().hex[:8]}") as watcher:
        await watcher.subscribe(topics.errors(), qos=1)

        async def collect() -> None:
            async for message in watcher.messages:
                events.append(ErrorEvent.model_validate_json(message.payload))

        async with in_background(collect()):
            yield events
