"""The ota service: releases, staged rollouts, one shared frame stream per release (docs/ota.md).

``serve`` opens the store, reads the open rollouts back (a restart, even after
kill -9, carries on where the tables say), then holds two connections from
nodefleet.wire: the session (a ``Client`` with the last will: requests,
wants, progress, the retained offers, replies from the provisioner) and a
``Publisher`` that writes the frames in batches.  Progress is handled in
arrival order by one worker (it writes to PostgreSQL); wants go straight into
the streams, and a tick checks stages and deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pydantic import ValidationError

from nodefleet.backoff import Backoff
from nodefleet.contracts import OFFLINE
from nodefleet.contracts.ota import OTA_SERVICE, Progress, Want
from nodefleet.contracts.topics import NodeTopic, OtaTopic, TopicError
from nodefleet.errors import InputError, NodefleetError, StorageError, StorageUnavailable
from nodefleet.fleet import ErrorReporter, Requester, answer, presence
from nodefleet.logging import get_logger
from nodefleet.wire import BrokerAddress, Client, Message, NotSent, Publisher, Reconnect, Will

from .directory import Directory
from .engine import Engine
from .leader import Leadership
from .pump import Pump
from .requests import handlers
from .settings import OtaSettings
from .store import OtaStore

log = get_logger(__name__)

ANSWER_GRACE = 2.0  # seconds the requests under way get to answer when a term ends
PROGRESS_QUEUE = 10_000  # progress waiting for the worker; beyond it, progress is dropped and counted


class OtaService:
    def __init__(self, settings: OtaSettings, store: OtaStore) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.errors = ErrorReporter(OTA_SERVICE, self.topics)
        self.address = BrokerAddress.parse(settings.mqtt_url)
        self.publisher = Publisher(self.address, client_id=f"{settings.client_id}-pub"[:64],
                                   keepalive=settings.keepalive)
        self.reconnect = Reconnect(self.address, event="ota_connection_lost")
        self.session: Client | None = None
        self.connected = asyncio.Event()
        self.engine = Engine(store=store, topics=self.topics, errors=self.errors, master=settings.ota_master,
                             publish=self._publish_retained, max_downloads=settings.max_downloads,
                             silence=settings.member_silence, return_deadline=settings.return_deadline,
                             gather=settings.gather)
        self.pump = Pump(self.engine, self.publisher, self.topics, batch=settings.batch_frames)
        self.engine.wake = self.pump.wake
        self.progress: asyncio.Queue[tuple[str, Progress]] = asyncio.Queue(maxsize=PROGRESS_QUEUE)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _publish_retained(self, topic: str, payload: bytes) -> None:
        if self.session is None:
            raise NotSent("not connected to the broker")
        await self.session.publish(topic, payload, qos=1, retain=True)

    # -- connections ----------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.publisher.run())
            group.create_task(self.pump.run())
            group.create_task(self._progress_worker())
            group.create_task(self._ticker())
            group.create_task(self.reconnect.run(self._session, down=self._down))

    def _down(self) -> None:
        self.session = None
        self.connected.clear()

    async def _session(self) -> None:
        status = self.topics.service_status(OTA_SERVICE, self.settings.instance)
        client_id = f"{self.settings.client_id}-{self.settings.instance}"[:64]
        will = Will(status, OFFLINE, qos=1, retain=True)
        async with Client(self.address, client_id=client_id, will=will, keepalive=self.settings.keepalive) as mqtt:
            requester = Requester(mqtt, self.topics, client_id=client_id.replace(".", "-"))
            await requester.start()
            await mqtt.subscribe(self.topics.requests(OTA_SERVICE), qos=1)
            await mqtt.subscribe(self.topics.all_ota(OtaTopic.WANT), qos=0)
            await mqtt.subscribe(self.topics.all_ota(OtaTopic.PROGRESS), qos=1)
            await mqtt.subscribe(self.topics.all_nodes(NodeTopic.STATUS), qos=1)  # for the streams' gather
            request_handlers = handlers(self.engine, Directory(requester, timeout=self.settings.directory_timeout))
            requests_prefix = self.topics.requests(OTA_SERVICE)[:-1]
            async with presence(mqtt, status, self.errors):
                self.session = mqtt
                self.connected.set()
                self.reconnect.up()
                self._background(self._reconcile())
                async for message in mqtt.messages:
                    if requester.feed(message):
                        continue
                    if message.topic.startswith(requests_prefix):
                        action = self.topics.request_action(message.topic)
                        self._background(answer(mqtt, message.payload, request_handlers, action, self.errors))
                    else:
                        self.on_node_message(message)

    async def serve(self, *, ready: asyncio.Event | None = None) -> None:
        """Read the open rollouts back, connect, and run until cancelled or until a change could not be written
        (then it returns: the caller starts a new term from the tables); closes the store at the end."""
        try:
            try:
                await self.engine.load()
            except StorageUnavailable as exc:
                log.warning("database_unavailable", doing="load", error=str(exc))
                return
            async with asyncio.TaskGroup() as group:
                running = group.create_task(self.run())
                await self.connected.wait()
                await self.publisher.connected.wait()
                log.info("ota_ready", rollouts=len(self.engine.rollouts))
                if ready is not None:
                    ready.set()
                await self.engine.stale.wait()
                log.warning("ota_tables_behind", reason="a rollout's change could not be written (PostgreSQL "
                            "away): starting again from the tables; the nodes' next reports fill in the rest")
                if self._tasks:  # answers on their way (what they say was written, or says it was not)
                    await asyncio.wait(set(self._tasks), timeout=ANSWER_GRACE)
                running.cancel()
        finally:
            stats = self.pump.stats
            log.info("ota_stopped", shared_frames=stats.shared_frames, repair_frames=stats.repair_frames)
            with contextlib.suppress(Exception):
                await self.engine.store.close()

    async def _reconcile(self) -> None:
        try:
            await self.engine.reconcile()
        except NodefleetError as exc:
            log.warning("ota_reconcile_failed", error=str(exc))

    def _background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the nodes --------------------------------------------------------------
    def on_node_message(self, message: Message) -> None:
        try:
            parsed = self.topics.parse(message.topic)
        except TopicError as exc:
            self.errors.report("bad_topic", str(exc), topic=message.topic)
            return
        node = parsed.node
        if parsed.ota == OtaTopic.WANT:
            try:
                want = Want.model_validate_json(message.payload)
            except ValidationError as exc:
                self.errors.report("bad_want", f"{node}: {exc.errors()[0]['msg']}", topic=message.topic, node=node)
                return
            try:
                self.engine.on_want(node, want, now=time.monotonic())
            except InputError as exc:
                self.errors.report("rejected_want", str(exc), topic=message.topic, node=node)
        elif parsed.kind == NodeTopic.STATUS and parsed.ota is None:
            self.engine.on_status(node, message.payload == b"online", now=time.monotonic())
        elif parsed.ota == OtaTopic.PROGRESS:
            try:
                progress = Progress.model_validate_json(message.payload)
            except ValidationError as exc:
                self.errors.report("bad_progress", f"{node}: {exc.errors()[0]['msg']}", topic=message.topic,
                                   node=node)
                return
            try:
                self.progress.put_nowait((node, progress))
            except asyncio.QueueFull:
                self.errors.report("progress_dropped", f"{node}: {PROGRESS_QUEUE} progress messages wait already",
                                   topic=message.topic, node=node)

    async def _progress_worker(self) -> None:
        while True:
            node, progress = await self.progress.get()
            try:
                await self.engine.on_progress(node, progress)
            except InputError as exc:
                self.errors.report("rejected_progress", str(exc), topic=self.topics.ota(node, OtaTopic.PROGRESS),
                                   node=node)
            except StorageError as exc:
                self.errors.report("storage", f"progress of {node} not recorded: {exc}", node=node)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_interval)
            try:
                await self.engine.tick()
            except StorageError as exc:
                log.warning("ota_tick_failed", error=str(exc))


async def open_store(settings: OtaSettings) -> OtaStore:
    backoff = Backoff(most=settings.db_retry_max, reset_after=float("inf"))
    while True:
        try:
            return await OtaStore.open(settings.database_url)
        except (StorageUnavailable, OSError) as exc:
            log.warning("database_unavailable", doing="open", error=str(exc) or type(exc).__name__,
                        retry_in=round(backoff.next_pause, 2))
        await backoff.wait()


async def serve(settings: OtaSettings, *, ready: asyncio.Event | None = None) -> None:
    """Run the ota service until cancelled: active while it holds the leadership lock, standby before (leader.py)."""
    log.info("ota_starting", broker=BrokerAddress.parse(settings.mqtt_url).url, instance=settings.instance,
             master_key=settings.ota_master is not None)
    if settings.ota_master is None:
        log.warning("ota_no_master_key", hint="set NODEFLEET_OTA_MASTER_KEY (the provisioner's): without it no "
                    "rollout can start")
    leadership = Leadership(settings.database_url, instance=settings.instance, poll=settings.leader_poll,
                            retry_max=settings.db_retry_max)
    try:
        while True:
            await leadership.acquire()
            log.info("ota_active", instance=settings.instance)
            terms = Backoff(most=settings.db_retry_max)  # a term that ended at once: wait longer for the next
            while True:  # terms under the same lock: a new one when the tables fell behind (serve returned)
                terms.attempt()
                service = OtaService(settings, await open_store(settings))
                async with asyncio.TaskGroup() as group:
                    serving = group.create_task(service.serve(ready=ready))
                    lost = group.create_task(leadership.held())
                    await asyncio.wait({serving, lost}, return_when=asyncio.FIRST_COMPLETED)
                    serving.cancel()
                    lost.cancel()
                if lost.done() and not lost.cancelled():
                    break  # lost the lock: step down (a new service reads the tables back once it holds it again)
                await terms.wait()
                if not await leadership.check():
                    break  # the outage took the lock's session too: compete for it again, no term without it
    finally:
        await leadership.release()
