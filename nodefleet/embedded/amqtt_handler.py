"""The per-connection protocol handler of the embedded broker: amqtt's, with reliable QoS 1 delivery.

amqtt 0.12.1 waits at most 5 s for a subscriber's PUBACK and then forgets the
message, and it forgets every unacknowledged message when the connection drops,
so nothing is redelivered after a reconnect.  A subscriber that acknowledges
only after its database commit (the telemetry service) would lose messages.
Here an outgoing QoS 1 message stays in the session's in-flight table until it
is acknowledged, however long that takes, and is sent again (DUP) when the
session reconnects.  amqtt also ignores an expired keepalive, so a node that
loses power never gets its last will published; here the connection is closed.

At most ``MAX_INFLIGHT`` QoS 1 messages per session wait for their PUBACK; the
rest wait in the session's queue, in order, and go out as PUBACKs come back
(amqtt had no limit and dropped messages once the 65,535 packet ids ran out).
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.errors import ProtocolHandlerError
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING, IncomingApplicationMessage, OutgoingApplicationMessage

from nodefleet.logging import get_logger

log = get_logger(__name__)

# Unacknowledged QoS 1 messages per session, as Mosquitto's max_inflight_messages in deploy/.
MAX_INFLIGHT = 10_000


class DeliveryHandler(BrokerProtocolHandler):
    """amqtt's broker handler with unbounded PUBACK waits, redelivery on reconnect and keepalive expiry."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stopped = False
        self._side_tasks: set[asyncio.Task[None]] = set()
        # A message the client sent that the broker took from the queue but has not handled yet (see taken()).
        self.taken: Any = None

    async def mqtt_deliver_next_message(self) -> Any:
        # amqtt's message loop can take a message and then end at a disconnect without handling it: keep it here.
        self.taken = await super().mqtt_deliver_next_message()
        return self.taken

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("mqtt_delivery_failed", client_id=self.session.client_id if self.session else None,
                        error=repr(task.exception()))

    async def stop(self) -> None:
        self._stopped = True
        await super().stop()
        for task in list(self._side_tasks):
            task.cancel()

    def handle_read_timeout(self) -> None:
        # Nothing heard for 1.5 x keepalive: the client is gone (power cut, WiFi lost); publish its will.
        if not self._stopped:
            log.info("mqtt_keepalive_expired", client_id=self.session.client_id if self.session else None)
            self._spawn(self.handle_connection_closed())

    def start_delivery(self, topic: str, data: bytes | bytearray, qos: int) -> None:
        """Send one message without waiting for it; a QoS 1 one takes its in-flight slot at once."""
        if self.session is None:
            return
        packet_id = self.session.next_packet_id if qos else None
        message = OutgoingApplicationMessage(packet_id, topic, qos, data, False)
        if packet_id is not None:
            self.session.inflight_out[packet_id] = message
        self._spawn(self._handle_message_flow(message))

    def send_backlog(self) -> None:
        """Send the session's queued messages while its in-flight window has room."""
        session = self.session
        while (
            session is not None
            and not self._stopped
            and len(session.inflight_out) < MAX_INFLIGHT
            and not session.retained_messages.empty()
        ):
            queued = session.retained_messages.get_nowait()
            self.start_delivery(queued.topic, queued.data, queued.qos or 0)

    async def _retry_deliveries(self) -> None:
        """Resend what the last connection left unacknowledged, without holding up the new connection."""
        if self.session is None:
            return
        for message in [*self.session.inflight_in.values(), *self.session.inflight_out.values()]:
            self._spawn(self._handle_message_flow(message))

    async def _handle_qos1_message_flow(self, app_message: OutgoingApplicationMessage | IncomingApplicationMessage) -> None:
        if app_message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(app_message)
            return
        session = self.session
        if session is None or app_message.packet_id is None or app_message.qos != QOS_1:
            raise ValueError(f"not an outgoing QoS 1 message with a packet id: {app_message!r}")
        packet_id = app_message.packet_id
        session.inflight_out[packet_id] = app_message
        if self._stopped:
            return  # the connection is gone: the message waits in the session for the next one
        waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        # Registered before sending, so a PUBACK that arrives at once is not missed.
        self._puback_waiters[packet_id] = waiter
        try:
            packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
            await self._send_packet(packet)
            app_message.publish_packet = packet
            if self._stopped and not waiter.done():
                return
            app_message.puback_packet = await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # the waiter was cancelled because the connection closed: keep it for redelivery
        except ProtocolHandlerError:
            if self._stopped:
                return  # amqtt's way of saying the send was cancelled by the connection closing
            raise
        finally:
            if self._puback_waiters.get(packet_id) is waiter:
                del self._puback_waiters[packet_id]
        session.inflight_out.pop(packet_id, None)
        self.send_backlog()
