"""The control-plane MQTT client: fleet requests, error events and the retained service status.

Separate from the ingest session (which holds acknowledgements back) so that
queries are answered and errors reported even while ingest waits for the
database.
"""

from __future__ import annotations

import asyncio

from nodefleet.contracts import OFFLINE
from nodefleet.contracts.queries import TELEMETRY_SERVICE
from nodefleet.fleet import ErrorReporter, Handler, answer, presence, serve_on_faststream
from nodefleet.logging import get_logger
from nodefleet.wire import BrokerAddress, Client, Reconnect, Will

from .settings import TelemetrySettings

log = get_logger(__name__)


class ControlPlane:
    def __init__(self, settings: TelemetrySettings, handlers: dict[str, Handler], errors: ErrorReporter) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.handlers = handlers
        self.errors = errors
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.status_topic = self.topics.service_status(TELEMETRY_SERVICE, settings.instance)
        self.reconnect = Reconnect(self.address, event="control_connection_lost")
        self.ready = asyncio.Event()
        self._requests: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected (the wire's reconnect policy) until cancelled."""
        if self.settings.request_plane == "faststream":
            await serve_on_faststream(self.address, client_id=self._client_id(), service=TELEMETRY_SERVICE,
                                      topics=self.topics, handlers=self.handlers, errors=self.errors,
                                      status_topic=self.status_topic, ready=self.ready)
            return
        await self.reconnect.run(self._session, down=self.ready.clear)

    def _client_id(self) -> str:
        return f"{self.settings.client_id}-control-{self.settings.instance}"[:64]

    async def _session(self) -> None:
        will = Will(self.status_topic, OFFLINE, qos=1, retain=True)
        # Request and reply: without TCP_NODELAY each answer (a PUBACK and the reply's PUBLISH back to back)
        # waited about 40 ms for the requester's delayed ACK (bench.request_plane: p50 44 ms -> about 1 ms).
        async with Client(self.address, client_id=self._client_id(), clean_session=True, will=will, nodelay=True,
                          pending_calls=10_000) as mqtt:
            await mqtt.subscribe(self.topics.requests(TELEMETRY_SERVICE), qos=1)
            async with presence(mqtt, self.status_topic, self.errors):
                self.ready.set()
                self.reconnect.up()
                async for message in mqtt.messages:
                    action = self.topics.request_action(message.topic)
                    task = asyncio.create_task(answer(mqtt, message.payload, self.handlers, action, self.errors))
                    self._requests.add(task)
                    task.add_done_callback(self._requests.discard)
