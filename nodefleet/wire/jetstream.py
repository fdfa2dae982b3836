"""Ingest from a NATS cluster: the node traffic its MQTT layer stored, through JetStream durable consumers.

Nodes and the CLI speak MQTT 3.1.1 to any server of the cluster.  The MQTT
layer stores every QoS 1 PUBLISH in its stream ``$MQTT_msgs`` (subject
``$MQTT.msgs.<topic as a subject>``, replicated on ``mqtt.stream_replicas``
servers) before it sends the PUBACK, so what a node saw acknowledged is on a
majority of servers.  :class:`JetStreamSubscriber` reads that stream through
durable pull consumers named after the ingest group, one per filter
(:func:`durable_name`): every instance of the group fetches from the same
consumers, so the cluster splits the messages
between them (MQTT ``$share`` is not split across NATS servers,
nats-server#6859), and the consumer keeps what arrives while no instance
runs.  The stream's retention is *interest*: a message is kept until every
consumer it matches acknowledged it, and one published before the consumer first
existed is not kept.

As with :class:`~nodefleet.wire.subscriber.AckingSubscriber` nothing is
acknowledged on receipt: the caller acknowledges (:meth:`ack`) after its
commit.  An acknowledgement is a publish to the message's reply subject, so
it is valid on any connection: messages fetched before a reconnect are still
acknowledged after it.  A message nobody acknowledged within ``ack_wait``
seconds (its instance died) goes to another fetch, so the caller must store
idempotently, as it already does.

QoS 0 publishes never enter ``$MQTT_msgs`` (MQTT's own "at most once"), so
they are taken from the plain subjects with a NATS queue group of the same
name, which also splits them; the copies of QoS 1 publishes on those
subjects (header ``Nmqtt-Pub`` not ``0``) are left to the stream.  A queue
subscription is interest, not storage: a QoS 0 publish reaches us only once
the server it enters knows of it.  Our own server knows when ``subscribed``
is set (the SUB is flushed); the other servers learn it over the routes a
moment later, and what they take before is dropped, as MQTT allows for
QoS 0 (tests/scale/test_nats_qos0.py waits for a probe through every server).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from urllib.parse import urlsplit

import nats
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ..backoff import Backoff
from ..errors import BrokerUnavailable, ConnectionLost
from ..logging import get_logger
from .address import BrokerAddress
from .reconnect import Reconnect
from .subscriber import Batches, Inbound

log = get_logger(__name__)

MQTT_STREAM = "$MQTT_msgs"
MQTT_PREFIX = "$MQTT.msgs."
MQTT_QOS_HEADER = "Nmqtt-Pub"
STATUS_HEADER = "Status"
_ACK = b"+ACK"


def subject_of(topic_filter: str) -> str:
    """An MQTT topic or filter as NATS writes it: ``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``, ``.`` -> ``//``."""
    wild = {"+": "*", "#": ">"}
    return ".".join(wild.get(part, part.replace(".", "//")) for part in topic_filter.split("/"))


def topic_of(subject: str) -> str:
    """The MQTT topic of a NATS subject (the inverse of :func:`subject_of` for topics)."""
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


def durable_name(group: str, topic_filter: str) -> str:
    """The durable consumer of one filter for one group: ``<group>-<hash of the filter>``.

    One consumer per filter, not one with every filter: a consumer with several filter
    subjects cost the cluster about three times the CPU per message (bench.scale_out).
    """
    return f"{group}-{hashlib.sha1(topic_filter.encode()).hexdigest()[:10]}"


def servers_of(url: str) -> list[str]:
    """``nats://host:port[,host:port...]`` -> one ``nats://host:port`` per server."""
    parts = urlsplit(url)
    if parts.scheme != "nats" or not parts.netloc:
        raise BrokerUnavailable(f"not an engine URL: {url!r}: use nats://host:port[,host:port...]")
    return [f"nats://{hostport}" for hostport in parts.netloc.split(",") if hostport]


class JetStreamSubscriber(Batches):
    """Fetches the node traffic of ``filters`` (MQTT filters) for the ingest group ``consumer``."""

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        filters: list[str],
        buffer_limit: int = 20_000,
        fetch_size: int = 2000,
        ack_wait: float = 30.0,
        connect_timeout: float = 5.0,
        max_backoff: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(buffer_limit)
        self.servers = servers_of(url)
        self.consumer = consumer
        self.filters = filters
        self.fetch_size = fetch_size
        self.ack_wait = ack_wait
        self.connect_timeout = connect_timeout
        first = urlsplit(self.servers[0])
        self.reconnect = Reconnect(BrokerAddress(first.hostname or "", first.port or 4222),
                                   event="nats_connection_lost", failed_event="nats_connect_failed",
                                   backoff=backoff or Backoff(most=max_backoff))
        self.dropped_core = 0
        """QoS 0 messages the client library dropped because we fell behind (a slow consumer)."""
        self._nc: nats.NATS | None = None
        self._replies: dict[int, str] = {}
        self._next_id = 0
        self._room = asyncio.Event()
        self._room.set()
        self._acks: list[str] = []
        self._ack_ready = asyncio.Event()

    async def run(self) -> None:
        """Connect, bind the consumer and fetch; reconnect (``reconnect``'s policy) until cancelled."""
        await self.reconnect.run(self._session, down=self._down)

    def _down(self) -> None:
        self.subscribed.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            asyncio.ensure_future(nc.close())

    def _drained(self) -> None:
        self._room.set()

    async def _connect(self) -> nats.NATS:
        # Each attempt starts at the next server, so a dead one is not tried first forever.
        servers = self.servers[self.connections % len(self.servers):] + self.servers[:self.connections % len(self.servers)]
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def closed() -> None:
            if not lost.done():
                lost.set_result(None)

        async def error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self.dropped_core += 1

        try:
            nc = await nats.connect(servers, allow_reconnect=False, connect_timeout=self.connect_timeout,
                                    max_reconnect_attempts=0, dont_randomize=True, name=self.consumer,
                                    disconnected_cb=closed, closed_cb=closed, error_cb=error)
        except (NoServersError, OSError, NatsError, TimeoutError) as exc:
            raise BrokerUnavailable(f"cannot reach the NATS cluster at {', '.join(servers)}: {exc or type(exc).__name__}") \
                from exc
        self._lost = lost
        return nc

    async def _session(self) -> None:
        self.connections += 1
        nc = await self._connect()
        self._nc = nc
        try:
            js = nc.jetstream()
            for topic_filter in self.filters:
                config = ConsumerConfig(
                    durable_name=durable_name(self.consumer, topic_filter),
                    filter_subject=MQTT_PREFIX + subject_of(topic_filter),
                    ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait,
                    max_ack_pending=max(self.buffer_limit * 2, 10_000), max_deliver=-1,
                )
                try:
                    await js.add_consumer(MQTT_STREAM, config)
                except NotFoundError as exc:
                    # The MQTT layer makes its stream at its first MQTT client; until then there is nothing to read.
                    raise BrokerUnavailable(f"no {MQTT_STREAM} stream yet (no MQTT client has connected)") from exc
            await self._drop_single_consumer(js)
            for topic_filter in self.filters:
                await nc.subscribe(subject_of(topic_filter), queue=self.consumer, cb=self._core,
                                   pending_msgs_limit=self.buffer_limit)
            # SUB is only queued by the library: until our server has it, QoS 0 publishes are not ours
            # (at most once), so "subscribed" waits for the round trip, bounded like the connect.
            await nc.flush(timeout=self.connect_timeout)
            log.info("nats_subscribed", servers=nc.connected_url.netloc if nc.connected_url else "?",
                     consumer=self.consumer, filters=len(self.filters))
            self.subscribed.set()
            self.reconnect.up()
            if self._acks:
                self._ack_ready.set()  # acknowledgements of messages fetched on the connection before
            await self._serve(nc)
        except (ConnectionClosedError, NatsError) as exc:
            raise ConnectionLost(f"the NATS connection ended: {exc or type(exc).__name__}") from exc
        except asyncio.CancelledError:
            await self.disconnect()
            raise

    async def _drop_single_consumer(self, js) -> None:
        """Delete the durable named exactly like the group, the one consumer for all filters of earlier releases.

        Nothing reads it once the group has a consumer per filter, yet the stream's interest retention
        keeps every message it matches until it acknowledges them: left alone, it would hold all node
        traffic on disk for ever.  The per-filter names (``<group>-<hash>``) never equal the group.
        """
        try:
            await js.delete_consumer(MQTT_STREAM, self.consumer)
        except NotFoundError:
            return
        log.warning("nats_old_consumer_deleted", consumer=self.consumer, stream=MQTT_STREAM,
                    reason="replaced by one durable consumer per filter; it held the stream's messages")

    async def _serve(self, nc: nats.NATS) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for topic_filter in self.filters:
                    group.create_task(self._fetch(nc, durable_name(self.consumer, topic_filter)))
                group.create_task(self._send_acks(nc))
                group.create_task(self._watch())
        except* (ConnectionClosedError, NatsError, ConnectionLost) as failures:
            raise ConnectionLost(f"the NATS connection ended: {failures.exceptions[0]}") from None

    async def _watch(self) -> None:
        await self._lost
        raise ConnectionLost("the NATS connection closed")

    async def _fetch(self, nc: nats.NATS, durable: str) -> None:
        """Pull requests of our own to ``durable``, answered into an inbox subscription of its own.

        nats-py's ``PullSubscription.fetch`` waits for each message with its own timeout (a
        ``wait_for`` per message): that alone cost more CPU than decoding and storing the
        message (bench.scale_out).  A request asks only for what the buffer has room for
        (each filter's loop may add one ``fetch_size`` beyond it), so memory stays bounded.
        """
        wanted = 0
        answered = asyncio.Event()
        prefix = len(MQTT_PREFIX)

        async def pulled(message: nats.aio.msg.Msg) -> None:
            nonlocal wanted
            headers = message.headers
            if headers and STATUS_HEADER in headers:
                answered.set()  # 404/408/409: this request is over
                return
            self._next_id += 1
            self._replies[self._next_id] = message.reply
            self._buffer.append(Inbound(topic_of(message.subject[prefix:]), message.data, time.time(),
                                        self._next_id, 0))
            self._data.set()
            wanted -= 1
            if wanted <= 0:
                answered.set()

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=pulled, pending_msgs_limit=self.buffer_limit + self.fetch_size)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{MQTT_STREAM}.{durable}"
        expires = 1.0
        while True:
            room = self.buffer_limit - len(self._buffer)
            if room <= 0:
                self._room.clear()
                self.pauses += 1
                await self._room.wait()
                continue
            wanted = min(self.fetch_size, room)
            answered.clear()
            await nc.publish(subject, json.dumps({"batch": wanted, "expires": int(expires * 1e9)}).encode(),
                             reply=inbox)
            # The server ends a request when it is filled or with a status (408 at `expires`);
            # a bound in case that status is lost with a connection.
            try:
                await asyncio.wait_for(answered.wait(), expires + self.connect_timeout)
            except TimeoutError:
                continue

    async def _core(self, message: nats.aio.msg.Msg) -> None:
        headers = message.headers
        if headers and not headers.get(MQTT_QOS_HEADER, "0").startswith("0"):
            return  # a QoS 1 publish: it comes from the stream, acknowledged after commit
        self._buffer.append(Inbound(topic_of(message.subject), message.data, time.time(), 0, 0))
        self._data.set()

    async def _send_acks(self, nc: nats.NATS) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            replies, self._acks = self._acks, []
            for reply in replies:
                await nc.publish(reply, _ACK)
            await nc.flush()

    def ack(self, messages: list[Inbound]) -> int:
        """Acknowledge the stream messages among ``messages`` (on whatever connection is up); return how many."""
        count = 0
        for m in messages:
            reply = self._replies.pop(m.packet_id, None) if m.packet_id else None
            if reply:
                self._acks.append(reply)
                count += 1
        if count:
            self.acked += count
            self._ack_ready.set()
        return count

    async def disconnect(self, timeout: float = 1.0) -> None:
        """Send what acknowledgements are waiting, then close."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            replies, self._acks = self._acks, []
            for reply in replies:
                await nc.publish(reply, _ACK)
            await asyncio.wait_for(nc.flush(), timeout)
        except (NatsError, TimeoutError):
            pass  # unacknowledged ones come again after ack_wait
        try:
            await asyncio.wait_for(nc.close(), timeout)  # a dead server must not hold a shutdown
        except (NatsError, TimeoutError):
            pass
