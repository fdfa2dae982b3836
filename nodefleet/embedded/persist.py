"""Persistent sessions of the embedded broker kept in a file, so a clean restart of ``nodefleet up`` loses
nothing a client had not acknowledged.

amqtt keeps sessions only in memory.  On a clean stop the broker stops taking connections, gives the
clients ``ACK_GRACE`` to acknowledge what is in flight to them, closes the connections and lets every
message it already acknowledged reach the session queues.  Then it writes, for each persistent session
(CONNECT with clean session 0), its subscriptions and the QoS 1 messages its client has not acknowledged
(in flight, then queued) to a JSON file, atomically as the retained file.  At start they are restored
before the listeners open: a client that comes back with its client id finds its subscriptions and gets
what it missed (a message whose PUBACK was still on its way comes again: at least once, as MQTT allows).
The file is also written every ``save_interval`` while the broker runs (as Mosquitto's
``autosave_interval``), so a kill -9 loses at most the messages of the last interval, and may deliver
again what was acknowledged since the last write (at least once).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import RetainedApplicationMessage
from amqtt.mqtt.constants import QOS_1
from amqtt.session import Session

from nodefleet.embedded.amqtt_retained import StoredMessage, decode_message, encode_message, read_items, write_items
from nodefleet.logging import get_logger

log = get_logger(__name__)

QUIESCE_TIMEOUT = 2.0
"""How long a stop waits for acknowledged messages to reach the session queues."""
ACK_GRACE = 0.5
"""How long a stop waits for the clients' acknowledgements of what is in flight to them."""


@dataclass(frozen=True, slots=True)
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]]
    pending: list[StoredMessage]


def _decode_session(item: dict[str, Any]) -> StoredSession:
    return StoredSession(client_id=str(item["client_id"]), username=item["username"],
                         subscriptions=[(str(f), int(q)) for f, q in item["subscriptions"]],
                         pending=[decode_message(m) for m in item["pending"]])


class SessionFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[StoredSession]:
        """The stored sessions; none (and the file kept aside as ``*.bad``) when it cannot be read."""
        return read_items(self.path, "sessions", _decode_session, "sessions_file_unreadable")

    def save(self, sessions: list[StoredSession]) -> None:
        write_items(self.path, "sessions", [
            {"client_id": s.client_id, "username": s.username, "subscriptions": s.subscriptions,
             "pending": [encode_message(m) for m in s.pending]}
            for s in sessions
        ])

    def take(self) -> list[StoredSession]:
        """Load and remove: after a later crash the same messages must not come back a second time."""
        sessions = self.load()
        self.path.unlink(missing_ok=True)
        return sessions


async def quiesce(broker: Any) -> None:
    """Stop taking connections, close the open ones, and wait until what was acknowledged is queued."""
    for server in broker._servers.values():
        await server.close_instance()
    loop = asyncio.get_running_loop()
    # PUBACKs already on their way would otherwise be cut off, and those messages sent again after the restart.
    deadline = loop.time() + ACK_GRACE
    while loop.time() < deadline and any(s.inflight_out for s, h in broker._sessions.values()
                                         if h is not None and s.transitions.is_connected()):
        await asyncio.sleep(0.01)
    for session, handler in list(broker._sessions.values()):
        if handler is not None and session.transitions.is_connected():
            await handler.handle_connection_closed()
    deadline = loop.time() + QUIESCE_TIMEOUT
    while (broker.open_loops or not broker._broadcast_queue.empty() or broker._deliveries) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    if broker.open_loops or not broker._broadcast_queue.empty():
        log.error("sessions_not_quiet", connections=broker.open_loops, unbroadcast=broker._broadcast_queue.qsize())


def snapshot(broker: Any) -> list[StoredSession]:
    """Every persistent session: its subscriptions and its unacknowledged QoS 1 messages, oldest first."""
    subscriptions: dict[str, list[tuple[str, int]]] = {}
    for topic_filter, subscribers in broker._subscriptions.items():
        for session, qos in subscribers:
            subscriptions.setdefault(session.client_id, []).append((topic_filter, qos))
    stored = []
    for client_id, (session, _) in broker._sessions.items():
        if session.clean_session:
            continue
        pending = [StoredMessage(m.topic, bytes(m.data), QOS_1) for m in session.inflight_out.values() if m.qos]
        # Read, not taken: the broker keeps running after an interval's save. (asyncio.Queue has no public view.)
        for message in list(session.retained_messages._queue):
            if message.qos:
                pending.append(StoredMessage(message.topic, bytes(message.data), QOS_1))
        stored.append(StoredSession(client_id, session.username, subscriptions.get(client_id, []), pending))
    return stored


def restore(broker: Any, sessions: list[StoredSession]) -> None:
    """Put stored sessions back as disconnected ones (before anyone can connect)."""
    for stored in sessions:
        session = Session()
        session.client_id, session.username, session.clean_session = stored.client_id, stored.username, False
        for topic_filter, qos in stored.subscriptions:
            broker._subscriptions.setdefault(topic_filter, []).append((session, qos))
        for message in stored.pending:
            session.retained_messages.put_nowait(
                RetainedApplicationMessage(None, message.topic, message.payload, message.qos))
        broker._sessions[stored.client_id] = (session, None)
