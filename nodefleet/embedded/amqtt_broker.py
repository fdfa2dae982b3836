"""amqtt 0.12.1's broker with the defects this project measured fixed (see docs/embedded-broker.md).

Each override below replaces one amqtt method whose behaviour differs from
MQTT 3.1.1 (and from Mosquitto) in a way the services rely on:

- authentication runs before an existing session is touched, and checks our
  :class:`AccessList` (amqtt marks every client "anonymous" and then queues
  nothing for it while it is offline);
- on connect nothing retained is replayed (amqtt replays retained messages for
  every filter any client ever subscribed); retained messages go out only for
  a new subscription, at min(retained QoS, subscription QoS);
- a message is delivered once per client, at min(publish QoS, highest QoS of
  the client's matching subscriptions) (amqtt used the subscription's QoS, and
  sent one copy per matching filter);
- messages queued for an offline session go out with RETAIN=0;
- ``$share/<group>/<filter>`` subscriptions get each message once per group,
  round-robin over the connected members;
- deliveries are not awaited in order, so one slow subscriber holds up no one.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from nodefleet.embedded.amqtt_access import AccessError, AccessList, split_shared, topic_matches
from nodefleet.embedded.amqtt_handler import DeliveryHandler
from nodefleet.embedded.amqtt_retained import StoredMessage
from nodefleet.embedded.persist import StoredSession
from nodefleet.embedded.persist import restore as restore_sessions
from nodefleet.logging import get_logger

log = get_logger(__name__)

# A client silent for this many keepalive periods is dropped (MQTT 3.1.1, 3.1.2.10).
KEEPALIVE_GRACE = 1.5
_TAKEOVER_ATTEMPTS = 100
# Messages waiting per session beyond the in-flight window, as max_queued_messages in our Mosquitto config.
MAX_QUEUED = 1_000_000


def handled(handler: Any, message: Any) -> None:
    """The broker is handling the message the handler took: it is no longer a leftover."""
    if getattr(handler, "taken", None) is message:
        handler.taken = None


class NodefleetBroker(Broker):
    def __init__(self, config: dict[str, Any], *, access: AccessList, retained: list[StoredMessage] | None = None,
                 sessions: list[StoredSession] | None = None) -> None:
        super().__init__(config)
        self.access = access
        self._initial_retained = retained or []
        self._initial_sessions = sessions or []
        # Bumped on every change of a retained message, so a saver knows when to write.
        self.retained_changes = 0
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._share_turn: dict[str, int] = {}
        self._password_checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mqtt-auth")
        # What was refused or dropped, by reason, for `EmbeddedBroker.stats()` and the logs.
        self.counters: Counter[str] = Counter()
        # Connections whose messages are still being handled (a clean stop waits for them: persist.quiesce).
        self.open_loops = 0

    async def _start_listeners(self) -> None:
        # amqtt's start() has just cleared the retained messages; restore ours before anyone can connect.
        for message in self._initial_retained:
            self._retained_messages[message.topic] = RetainedApplicationMessage(
                None, message.topic, message.payload, message.qos
            )
        restore_sessions(self, self._initial_sessions)
        await super()._start_listeners()

    async def retain_message(self, source_session: Session | None, topic_name: str | None, data: Any,
                             qos: int | None = None) -> None:
        await super().retain_message(source_session, topic_name, data, qos)
        self.retained_changes += 1

    def retained_snapshot(self) -> list[StoredMessage]:
        return [StoredMessage(topic, bytes(m.data), m.qos or QOS_0) for topic, m in self._retained_messages.items()]

    # -- connecting ---------------------------------------------------------

    async def _authenticate(self, session: Session, _listener: object = None) -> bool:
        if session.username is None or not self.access.has_users():
            return self.access.verify(session.username, session.password)  # no hashing involved
        # Hashing (and a legacy scrypt hash's tens of ms) stays off the event loop, on threads no other code fills up.
        return await asyncio.get_running_loop().run_in_executor(
            self._password_checks, self.access.verify, session.username, session.password
        )

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            _, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}") from exc
        handler = DeliveryHandler(self.plugins_manager, loop=self._loop)
        if not await self._authenticate(incoming):
            handler.attach(incoming, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            self.counters["connect_refused"] += 1
            log.info("mqtt_client_refused", client_id=incoming.client_id, username=incoming.username,
                     remote=f"{remote_address}:{remote_port}")
            raise AMQTTError(f"client {incoming.client_id!r} not authorised")
        return handler, incoming

    async def _handle_client_session(
        self, reader: Any, writer: Any, client_session: Session, handler: Any, server: Any, listener_name: str
    ) -> None:
        try:
            session = await self._claim_session(client_session)
        except Exception as exc:
            await writer.close()
            raise AMQTTError(f"client {client_session.client_id!r} could not take its session: {exc}") from exc
        handler.attach(session, reader, writer)
        self._sessions[session.client_id] = (session, handler)
        self.open_loops += 1
        try:
            await handler.mqtt_connack_authorize(True)
            await handler.start()  # resends what the previous connection left unacknowledged
            handler.send_backlog()  # what was queued while away, with RETAIN=0 (amqtt sent RETAIN=1)
            await self._client_message_loop(session, handler)
            await self._deliver_leftovers(session, handler)
        finally:
            self.open_loops -= 1

    async def _deliver_leftovers(self, session: Session, handler: Any) -> None:
        """Publish what the client sent, and was acknowledged, just before its connection closed.

        amqtt's message loop ends at the disconnect and drops the message it took but did not handle, and those
        still waiting behind it.
        """
        leftovers = [handler.taken] if getattr(handler, "taken", None) is not None else []
        while not session.delivered_message_queue.empty():
            leftovers.append(session.delivered_message_queue.get_nowait())
        for message in leftovers:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(message)
            self.counters["delivered_after_disconnect"] += 1
            if not await self._handle_message_delivery(session, handler, done):
                break

    async def _claim_session(self, incoming: Session) -> Session:
        """The session this CONNECT continues (or a new one), with any older connection of its id closed."""
        if not incoming.client_id:
            incoming.client_id = gen_client_id()
        else:
            await self._close_connection_of(incoming.client_id)
        if incoming.clean_session:
            await self._delete_session(incoming.client_id)
            session, incoming.parent = incoming, 0
        elif incoming.client_id in self._sessions:
            session = self._sessions[incoming.client_id][0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                         "keep_alive", "username", "password", "remote_address", "remote_port"):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            session, incoming.parent = incoming, 0
        session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_GRACE)
        session.transitions.connect()
        return session

    async def _close_connection_of(self, client_id: str) -> None:
        """Session take-over: close the connection still using ``client_id`` and wait until it is gone."""
        for _ in range(_TAKEOVER_ATTEMPTS):
            session, handler = self._sessions.get(client_id, (None, None))
            if session is None or not session.transitions.is_connected():
                return
            await handler.handle_connection_closed()
            await asyncio.sleep(0.02)
        raise AMQTTError(f"client {client_id!r}: the previous connection did not close")

    # -- publishing ---------------------------------------------------------

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        handled(handler, message)
        if message is None:
            return True
        topic = message.topic
        if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
            self.counters["publish_invalid_topic"] += 1
            log.warning("mqtt_publish_invalid_topic", client_id=client_session.client_id, topic=topic)
            return False
        if not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            self.counters["publish_denied"] += 1
            log.info("mqtt_publish_denied", client_id=client_session.client_id,
                     username=client_session.username, topic=topic)
            return True
        await self._broadcast_message(client_session, topic, message.data, message.qos or QOS_0)
        if message.publish_packet is not None and message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, message.data, message.qos)
        return True

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: Any,
                                 force_qos: int | None = None) -> None:
        # "qos" is always the publish QoS here; amqtt used it only to force a will's QoS.
        await self._broadcast_queue.put({"session": session, "topic": topic, "data": data, "qos": force_qos or QOS_0})

    async def _run_broadcast(self, running_tasks: deque) -> None:
        broadcast = await self._broadcast_queue.get()
        try:
            await self._fan_out(broadcast)
        except Exception as exc:  # raised here, it would end amqtt's broadcast loop for every client
            self.counters["broadcast_failed"] += 1
            log.error("mqtt_broadcast_failed", topic=broadcast.get("topic"), error=repr(exc))

    async def _fan_out(self, broadcast: dict[str, Any]) -> None:
        topic = broadcast["topic"]
        # One copy per client at the highest QoS of its matching subscriptions, as Mosquitto does.
        once: dict[str, tuple[Session, int]] = {}
        for topic_filter, subscribers in list(self._subscriptions.items()):
            try:
                group, real_filter = split_shared(topic_filter)
            except AccessError:
                continue
            if not subscribers or not topic_matches(topic, real_filter):
                continue
            if group is not None:
                for session, sub_qos in self._next_share_member(topic_filter, subscribers):
                    await self._deliver(broadcast, session, min(broadcast["qos"], sub_qos))
                continue
            for session, sub_qos in subscribers:
                _, best = once.get(session.client_id, (session, -1))
                once[session.client_id] = (session, max(best, sub_qos))
        for session, sub_qos in once.values():
            await self._deliver(broadcast, session, min(broadcast["qos"], sub_qos))

    def _next_share_member(self, topic_filter: str, subscribers: list[tuple[Session, int]]) -> list[tuple[Session, int]]:
        connected = [s for s in subscribers if s[0].transitions.state == "connected"]
        members = connected or [s for s in subscribers if not s[0].clean_session]
        if not members:
            return []
        turn = self._share_turn.get(topic_filter, 0)
        self._share_turn[topic_filter] = turn + 1
        return [members[turn % len(members)]]

    async def _deliver(self, broadcast: dict[str, Any], session: Session, qos: int) -> None:
        topic = broadcast["topic"]
        if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
            self.counters["delivery_denied"] += 1
            return
        connected = session.transitions.state == "connected"
        if qos == QOS_0:
            handler = self._get_handler(session)
            if connected and isinstance(handler, DeliveryHandler):
                handler.start_delivery(topic, broadcast["data"], QOS_0)
            return
        if not connected and session.clean_session:
            return
        if session.retained_messages.qsize() >= MAX_QUEUED:
            self.counters["queue_full_dropped"] += 1
            if self.counters["queue_full_dropped"] % 10_000 == 1:
                log.error("mqtt_queue_full", client_id=session.client_id, limit=MAX_QUEUED,
                          dropped=self.counters["queue_full_dropped"])
            return
        # QoS 1 goes through the session's queue, so order holds when the in-flight window is full.
        session.retained_messages.put_nowait(RetainedApplicationMessage(broadcast["session"], topic, broadcast["data"], qos))
        handler = self._get_handler(session)
        if connected and isinstance(handler, DeliveryHandler):
            handler.send_backlog()

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Session) -> None:
        shared_filter, sub_qos = subscription
        # As Mosquitto 2.0 does, a $share subscription gets the retained messages of its filter too.
        topic_filter = split_shared(shared_filter)[1]
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if topic_matches(topic, topic_filter) and await self._topic_filtering(session, topic, Action.RECEIVE):
                qos = min(sub_qos, retained.qos or QOS_0, QOS_1)
                self._track(handler.mqtt_publish(topic, retained.data, qos, retain=True))

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        try:
            split_shared(topic_filter)
        except AccessError:
            self.counters["subscribe_invalid"] += 1
            return 0x80
        # QoS 2 is granted as QoS 1: nothing here uses it, and amqtt's QoS 2 flow forgets messages after 5 s.
        return await super().add_subscription((topic_filter, min(qos, QOS_1)), session)

    # -- access control -----------------------------------------------------

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        access = self.access.access_for(session.username)
        if access is None:
            return False
        if action == Action.PUBLISH:
            return access.may_publish(topic)
        if action == Action.SUBSCRIBE:
            allowed = access.may_subscribe(split_shared(topic)[1])
            self.counters["subscribe_denied"] += not allowed
            return allowed
        return access.may_receive(topic)

    # -- bookkeeping --------------------------------------------------------

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[Any]) -> None:
        self._deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("mqtt_delivery_failed", error=repr(task.exception()))

    async def shutdown(self) -> None:
        await super().shutdown()
        self._password_checks.shutdown(wait=False, cancel_futures=True)
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    def disconnect_user(self, username: str) -> int:
        """Close every connection logged in as ``username``; how many there were."""
        closed = 0
        for session, handler in list(self._sessions.values()):
            if session.username == username and session.transitions.is_connected():
                self._track(handler.handle_connection_closed())
                closed += 1
        return closed
