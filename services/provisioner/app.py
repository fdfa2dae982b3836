"""The provisioner: registry in PostgreSQL, one MQTT client, the HTTP edge.

Start order: database reachable (retried) and migrated, default home
present, HTTP edge listening, then the MQTT session subscribes to requests,
node status and info (all nodes) and the dynamic-security responses.
``ready`` is set once the session is subscribed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from nodefleet.backoff import Backoff
from nodefleet.contracts import NODE_TOPICS, OFFLINE, NodeKind, NodeTopic, TopicError
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.fleet import ErrorReporter, answer, presence
from nodefleet.logging import get_logger
from nodefleet.pg_errors import TRANSIENT
from nodefleet.tls import ca_der_base64
from nodefleet.wire import BrokerAddress, Client, Message, Reconnect, Will, WireError

from . import store, tz
from .credentials import CredentialError, Credentials, DynamicSecurity, NoCredentials
from .homie import HomieBridge, set_filter
from .http import HttpEdge
from .registration import NodeBroker
from .registry import Registry
from .requests import handlers
from .settings import ProvisionerSettings

log = get_logger(__name__)


async def _database(settings: ProvisionerSettings) -> asyncpg.Pool:
    backoff = Backoff(most=settings.db_retry_max, reset_after=float("inf"))
    while True:
        try:
            pool = await store.create_pool(settings.database_url)
            async with pool.acquire() as conn:
                await store.migrate(conn)
            return pool
        except TRANSIENT as exc:
            log.warning("database_unavailable", error=str(exc) or type(exc).__name__,
                        retry_in=round(backoff.next_pause, 2))
        await backoff.wait()


class Service:
    def __init__(self, settings: ProvisionerSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.errors = ErrorReporter(PROVISIONER_SERVICE, self.topics)
        self.dynsec = DynamicSecurity(timeout=settings.dynsec_timeout) if settings.credentials == "dynsec" else None
        credentials: Credentials = self.dynsec if self.dynsec is not None else NoCredentials()
        self.mqtt: Client | None = None
        self.reconnect = Reconnect(self.address, event="mqtt_connection_lost")
        self.registry = Registry(
            store=store.Store(pool), credentials=credentials, topics=self.topics, publish=self._publish,
            errors=self.errors, broker=NodeBroker(
                host=settings.broker_host or self.address.host, port=settings.broker_port or self.address.port,
                ca=ca_der_base64(settings.broker_ca) if settings.broker_ca is not None else None),
            pending_ttl=settings.pending_ttl,
            max_devices_per_home=settings.max_devices_per_home, ota_master=settings.ota_master,
        )
        self.handlers = handlers(self.registry)
        self.homie = HomieBridge(topics=self.topics, publish=self._publish, errors=self.errors,
                                 capabilities=self.registry.first_online.capabilities)
        # The node topics the provisioner follows (subscribed at their senders' QoS) and what it does with each.
        self.node_topics: dict[NodeKind, Callable[[str, bytes], Awaitable[object]]] = {
            NodeTopic.STATUS: self.registry.first_online.on_status,
            NodeTopic.INFO: self.registry.first_online.on_info,  # called with the retain flag too (_dispatch)
            NodeTopic.STATE: self._on_state,
            # A node refusing a config says so in its log: a waiting `device config` gets the reason.
            NodeTopic.LOG: self.registry.on_log,
            # Readings for the Homie values only: the latest one is all that matters (QoS 0, as sent).
            NodeTopic.TELEMETRY: self.homie.on_telemetry,
        }
        self.status_topic = self.topics.service_status(PROVISIONER_SERVICE, settings.instance)
        self.subscribed = asyncio.Event()
        self.http_port: int | None = None  # where the HTTP edge listens, once started
        self._tasks: set[asyncio.Task[None]] = set()

    async def _publish(self, topic: str, payload: str | bytes, retain: bool) -> None:
        if self.mqtt is None:
            raise CredentialError("not connected to the broker; try again in a moment")
        await self.mqtt.publish(topic, payload, qos=1, retain=retain)

    async def run_mqtt(self) -> None:
        """Stay connected (the wire's reconnect policy) until cancelled."""
        await self.reconnect.run(self._session, down=self._down)

    def _down(self) -> None:
        self.mqtt = None
        self.subscribed.clear()

    async def _session(self) -> None:
        will = Will(self.status_topic, OFFLINE, qos=1, retain=True)
        client_id = f"{self.settings.client_id}-{self.settings.instance}"[:64]
        # Bursts of retained publishes are expected here: a deep queue, no warnings about many pending calls.
        async with Client(self.address, client_id=client_id, will=will, max_queued_outgoing=100_000,
                          nodelay=True, max_inflight=1000, pending_calls=100_000) as mqtt:
            if self.dynsec is not None:
                await self.dynsec.start(mqtt)
            requests, homie_sets = self.topics.requests(PROVISIONER_SERVICE), set_filter()
            if self.settings.shared_group:
                # Every instance sees every status and info (a node is provisioned once, by a guarded UPDATE),
                # but a request (or a Homie set) must be answered once.
                requests = self.topics.shared(self.settings.shared_group, requests)
                homie_sets = self.topics.shared(self.settings.shared_group, homie_sets)
            await mqtt.subscribe(requests, qos=1)
            await mqtt.subscribe(homie_sets, qos=1)
            for kind in self.node_topics:
                await mqtt.subscribe(self.topics.every_node(kind), qos=NODE_TOPICS[kind].qos)
            self.mqtt = mqtt
            async with presence(mqtt, self.status_topic, self.errors):
                self.subscribed.set()
                self.reconnect.up()
                async for message in mqtt.messages:
                    self._dispatch(mqtt, message)

    def _dispatch(self, mqtt: Client, message: Message) -> None:
        if self.dynsec is not None and self.dynsec.feed(message):
            return
        topic = message.topic
        payload = message.payload
        if topic.startswith(f"{self.topics.fleet}/"):
            action = self.topics.request_action(topic)
            self._spawn(answer(mqtt, payload, self.handlers, action, self.errors))
            return
        if message.matches(set_filter()):
            self._spawn(self.homie.on_set(topic, payload))
            return
        try:
            parsed = self.topics.parse(topic)
        except TopicError as exc:
            self.errors.report("bad_topic", str(exc), topic=topic)
            return
        if parsed.what == NodeTopic.INFO:  # retained or live tells a node online from before (first_online.py)
            self._spawn(self.registry.first_online.on_info(parsed.node, payload, retained=message.retain))
            return
        handler = self.node_topics.get(parsed.what)
        if handler is not None:
            self._spawn(handler(parsed.node, payload))

    async def _on_state(self, node: str, payload: bytes) -> None:
        state = await self.registry.configs.on_state(node, payload)
        if state is not None:
            await self.homie.on_state(node, state)

    def _spawn(self, work) -> None:
        task = asyncio.create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work) -> None:
        try:
            await work
        except (asyncpg.PostgresError, OSError, WireError) as exc:
            # A node's next status or info retries; the failure is counted and reported.
            self.errors.report("provisioning_failed", str(exc) or type(exc).__name__)

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_interval)
            if self.mqtt is None:
                continue
            try:
                expired = await self.registry.removal.expire()
            except (asyncpg.PostgresError, OSError, WireError) as exc:
                log.warning("expiry_failed", error=str(exc) or type(exc).__name__)
                continue
            if expired:
                log.info("registrations_expired", nodes=expired)


async def serve(settings: ProvisionerSettings, *, ready: asyncio.Event | None = None,
                started: asyncio.Future[Service] | None = None) -> None:
    """Run the provisioner until cancelled; ``started`` (tests, benchmarks) receives the running service."""
    log.info("provisioner_starting", broker=BrokerAddress.parse(settings.mqtt_url).url,
             credentials=settings.credentials, ota_keys=settings.ota_master is not None)
    if settings.credentials == "none":
        log.warning("credentials_unchecked", detail="node credentials are handed out but the broker is not told of "
                    "them: any client may use any topic. Set NODEFLEET_PROVISIONER_CREDENTIALS=dynsec for a broker "
                    "with dynamic security")
    if settings.ota_master is None:
        log.warning("ota_off", detail="NODEFLEET_OTA_MASTER_KEY is not set: nodes are registered without an OTA key "
                    "and will take no over-the-air update. Make one with `openssl rand -hex 32` and give the same "
                    "key to the provisioner and the ota service")
    pool = await _database(settings)
    service = Service(settings, pool)
    if settings.default_home:
        tz.zone(settings.default_tz)
        await service.registry.store.ensure_home(settings.default_home, settings.default_tz)
    edge = HttpEdge(service.registry, service.errors, host=settings.http_host, port=settings.http_port,
                    register_limit=(settings.register_limit, settings.register_window)) \
        if settings.http_port >= 0 else None
    try:
        if edge is not None:
            await edge.start()
        async with asyncio.TaskGroup() as group:
            group.create_task(service.run_mqtt())
            group.create_task(service.expire_loop())
            group.create_task(service.registry.announcer.run())
            await service.subscribed.wait()
            service.http_port = edge.port if edge is not None else None
            if started is not None and not started.done():
                started.set_result(service)
            log.info("provisioner_ready", http_port=edge.port if edge else None)
            if ready is not None:
                ready.set()
    finally:
        if edge is not None:
            await edge.stop()
        for task in list(service._tasks):
            task.cancel()
        await pool.close()
        log.info("provisioner_stopped")
