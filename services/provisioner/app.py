"""The provisioner: registry in PostgreSQL, one MQTT client, the HTTP edge.

Start order: database reachable (retried) and migrated, default home
present, HTTP edge listening, then the MQTT session subscribes to requests,
node status and info (all nodes) and the dynamic-security responses.
``ready`` is set once the session is subscribed.
"""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import asyncpg

from nodefleet.contracts import OFFLINE, NodeTopic, TopicError
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.fleet import ErrorReporter, answer, presence
from nodefleet.logging import get_logger
from nodefleet.mqtt import BrokerAddress, client
from nodefleet.pg_errors import TRANSIENT

from . import store, tz
from .credentials import CredentialError, Credentials, DynamicSecurity, NoCredentials
from .homie import HomieBridge, set_filter
from .http import HttpEdge
from .registry import Registry
from .requests import handlers
from .settings import ProvisionerSettings

log = get_logger(__name__)


async def _database(settings: ProvisionerSettings) -> asyncpg.Pool:
    delay = 0.2
    while True:
        try:
            pool = await store.create_pool(settings.database_url)
            async with pool.acquire() as conn:
                await store.migrate(conn)
            return pool
        except TRANSIENT as exc:
            log.warning("database_unavailable", error=str(exc) or type(exc).__name__, retry_in=round(delay, 2))
        await asyncio.sleep(delay)
        delay = min(delay * 2, settings.db_retry_max)


class Service:
    def __init__(self, settings: ProvisionerSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.errors = ErrorReporter(PROVISIONER_SERVICE, self.topics)
        self.dynsec = DynamicSecurity(timeout=settings.dynsec_timeout) if settings.credentials == "dynsec" else None
        credentials: Credentials = self.dynsec if self.dynsec is not None else NoCredentials()
        self.mqtt: aiomqtt.Client | None = None
        self.registry = Registry(
            store=store.Store(pool), credentials=credentials, topics=self.topics, publish=self._publish,
            errors=self.errors, broker_host=settings.broker_host or self.address.host,
            broker_port=settings.broker_port or self.address.port, pending_ttl=settings.pending_ttl,
            max_devices_per_home=settings.max_devices_per_home,
        )
        self.handlers = handlers(self.registry)
        self.homie = HomieBridge(topics=self.topics, publish=self._publish, errors=self.errors,
                                 capabilities=self.registry.first_online.capabilities)
        self.status_topic = self.topics.service_status(PROVISIONER_SERVICE, settings.instance)
        self.subscribed = asyncio.Event()
        self.http_port: int | None = None  # where the HTTP edge listens, once started
        self._tasks: set[asyncio.Task[None]] = set()

    async def _publish(self, topic: str, payload: str | bytes, retain: bool) -> None:
        if self.mqtt is None:
            raise CredentialError("not connected to the broker; try again in a moment")
        await self.mqtt.publish(topic, payload, qos=1, retain=retain)

    async def run_mqtt(self) -> None:
        """Stay connected (reconnect with backoff) until cancelled."""
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_connection_lost", broker=self.address.url, error=str(exc), retry_in=round(delay, 2))
            self.mqtt = None
            self.subscribed.clear()
            if time.monotonic() - started > 10:
                delay = 0.2
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _session(self) -> None:
        will = aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True)
        client_id = f"{self.settings.client_id}-{self.settings.instance}"[:64]
        async with client(self.address, client_id=client_id, will=will, max_queued_outgoing=100_000,
                          nodelay=True, max_inflight=1000) as mqtt:
            mqtt.pending_calls_threshold = 100_000  # bursts of retained publishes are expected here
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
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.STATUS), qos=1)
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.INFO), qos=1)
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.STATE), qos=1)
            # A node refusing a config says so in its log: a waiting `device config` gets the reason.
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.LOG), qos=1)
            # Readings for the Homie values only: the latest one is all that matters, so no acknowledgements.
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.TELEMETRY), qos=0)
            self.mqtt = mqtt
            async with presence(mqtt, self.status_topic, self.errors):
                self.subscribed.set()
                async for message in mqtt.messages:
                    self._dispatch(mqtt, message)

    def _dispatch(self, mqtt: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if self.dynsec is not None and self.dynsec.feed(message):
            return
        topic = str(message.topic)
        payload = bytes(message.payload)  # type: ignore[arg-type]
        if topic.startswith(f"{self.topics.fleet}/"):
            action = self.topics.request_action(topic)
            self._spawn(answer(mqtt, payload, self.handlers, action, self.errors))
            return
        if message.topic.matches(set_filter()):
            self._spawn(self.homie.on_set(topic, payload))
            return
        try:
            parsed = self.topics.parse(topic)
        except TopicError as exc:
            self.errors.report("bad_topic", str(exc), topic=topic)
            return
        if parsed.kind == NodeTopic.STATUS:
            self._spawn(self.registry.first_online.on_status(parsed.node, payload))
        elif parsed.kind == NodeTopic.INFO:
            self._spawn(self.registry.first_online.on_info(parsed.node, payload))
        elif parsed.kind == NodeTopic.STATE:
            self._spawn(self._on_state(parsed.node, payload))
        elif parsed.kind == NodeTopic.TELEMETRY:
            self._spawn(self.homie.on_telemetry(parsed.node, payload))
        elif parsed.kind == NodeTopic.LOG:
            self._spawn(self.registry.on_log(parsed.node, payload))

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
        except (asyncpg.PostgresError, OSError, CredentialError, aiomqtt.MqttError) as exc:
            # A node's next status or info retries; the failure is counted and reported.
            self.errors.report("provisioning_failed", str(exc) or type(exc).__name__)

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_interval)
            if self.mqtt is None:
                continue
            try:
                expired = await self.registry.removal.expire()
            except (asyncpg.PostgresError, OSError, CredentialError, aiomqtt.MqttError) as exc:
                log.warning("expiry_failed", error=str(exc) or type(exc).__name__)
                continue
            if expired:
                log.info("registrations_expired", nodes=expired)


async def serve(settings: ProvisionerSettings, *, ready: asyncio.Event | None = None,
                started: asyncio.Future[Service] | None = None) -> None:
    """Run the provisioner until cancelled; ``started`` (tests, benchmarks) receives the running service."""
    log.info("provisioner_starting", broker=BrokerAddress.parse(settings.mqtt_url).url,
             credentials=settings.credentials)
    if settings.credentials == "none":
        log.warning("credentials_unchecked", detail="node credentials are handed out but the broker is not told of "
                    "them: any client may use any topic. Set NODEFLEET_PROVISIONER_CREDENTIALS=dynsec for a broker "
                    "with dynamic security")
    pool = await _database(settings)
    service = Service(settings, pool)
    if settings.default_home:
        tz.zone(settings.default_tz)
        await service.registry.store.ensure_home(settings.default_home, settings.default_tz)
    edge = HttpEdge(service.registry, service.errors, host=settings.http_host, port=settings.http_port) \
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
