"""The scheduler service: holds every node's rules and sends a backup when a node does not run its own.

``serve`` loads the last valid schedules from PostgreSQL, subscribes to every
node's retained schedule, config (for tz), state and status, waits for the
retained messages to settle, then runs the planner.  The fleet requests
``scheduler/show`` and ``scheduler/set`` (schedule changes, see changes.py) are
answered on the same session.  Run events go out on
``Topics.scheduler_events()``; the telemetry service keeps them for
``nodefleet schedule history``.

The scheduler is also the fleet's time-keeper: it offers its clock (``set/time``)
to a node when it comes online, when it asks (``<prefix>/clock``: its clock is
unset) and every ``time_every`` seconds to every online node; a node takes it
only when NTP has not set its clock.  A node that said it sleeps (status
``sleeping``, ``sleep_until`` in its state) is not lost: no backup for it until
it oversleeps, then it is flagged (``overslept`` on ``fleet/errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from nodefleet.contracts import NODE_TOPICS, OFFLINE, State
from nodefleet.contracts.scheduling import SCHEDULER_SERVICE, BadSchedule
from nodefleet.contracts.topics import Command, NodeKind, NodeTopic, TopicError
from nodefleet.fleet import ErrorReporter, answer, presence
from nodefleet.logging import get_logger
from nodefleet.wire import BrokerAddress, Client, NotSent, Publisher, Reconnect, Will

from .changes import ScheduleChanges
from .gcpacer import GcPacer
from .nodes import NodeView, parse_schedule, parse_tz
from .planner import Planner
from .requests import handlers
from .rulebook import Run
from .settings import SchedulerSettings
from .store import Event, Store

log = get_logger(__name__)

SETTLE = 0.3  # seconds without a message after subscribing: the retained messages are in
SETTLE_MAX = 5.0
EVENT_CHUNK = 1000  # run events per write; the loop gets a turn between chunks


@functools.lru_cache(maxsize=4096)
def switch_command(run: Run) -> bytes:
    """The SwitchCommand contract, written directly: a burst of thousands must not wait for model building.

    ``expires`` is the window's end: a backup held by the broker (or by a node reconnecting) for longer
    than COMMAND_TTL still runs while its window is open, and never after. No ``sent``: the node judges
    by ``expires`` alone, and the bytes stay a function of the run.
    Cached: runs due in the same second are mostly the same rule in the same zone, so the same bytes.
    """
    state = "ON" if run.action == "on" else "OFF"
    return json.dumps({"v": 1, "state": state, "until": run.end, "run_id": run.run_id, "expires": run.end}).encode()


def _event_acks(acked: asyncio.Future[None]) -> None:
    """Nothing waits for the events' acknowledgements; a connection lost first is only logged."""
    if not acked.cancelled() and acked.exception() is not None:
        log.warning("run_events_not_acknowledged", error=str(acked.exception()))


class Scheduler:
    def __init__(self, settings: SchedulerSettings, store: Store) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.store = store
        self.errors = ErrorReporter(SCHEDULER_SERVICE, self.topics)
        self.planner = Planner(store=store, grace=settings.grace, lease=settings.lease, send=self.send_backups,
                               publish=self.publish_events, wake_grace=settings.wake_grace,
                               ahead=settings.claim_ahead)
        self.address = BrokerAddress.parse(settings.mqtt_url)
        # Backups and run events go out on a connection of their own (nodefleet.wire.Publisher).
        self.publisher = Publisher(self.address, client_id=f"nodefleet-sched-pub-{settings.instance}"[:64],
                                   keepalive=settings.keepalive)
        self.reconnect = Reconnect(self.address, event="scheduler_connection_lost")
        self.connected = asyncio.Event()
        self.settled = asyncio.Event()
        self._last_message = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.events_topic = self.topics.scheduler_events()
        self._switch_topics: dict[str, str] = {}  # built once per node: a burst sends thousands
        self.session: Client | None = None  # the subscriber's connection while it is up
        self.changes = ScheduleChanges(store, self.publish_schedule, self._held_schedule)
        # The node topics the scheduler follows (subscribed at their senders' QoS) and what it does with each.
        self._node_topics: dict[NodeKind, Callable[[NodeView, str, bytes], None]] = {
            NodeTopic.SCHEDULE: self._on_schedule, NodeTopic.CONFIG: self._on_config,
            NodeTopic.STATE: self._on_state, NodeTopic.STATUS: self._on_status, NodeTopic.CLOCK: self._on_clock,
        }
        self._wake_checks: dict[str, float] = {}  # node -> the sleep_until a check for oversleeping is pending for

    # -- outgoing ------------------------------------------------------------
    def _switch_topic(self, node: str) -> str:
        topic = self._switch_topics.get(node)
        if topic is None:
            topic = self._switch_topics[node] = self.topics.set(node, Command.SWITCH)
        return topic

    async def send_backups(self, won: list[Event]) -> asyncio.Future[None]:
        """Write the won backups at QoS 1 in one go; done when the broker acknowledged them (NotSent: not connected)."""
        acked = self.publisher.publish([(self._switch_topic(node), switch_command(run)) for node, run, _ in won], qos=1)
        for node, run, detail in won[:3]:
            log.info("backup_sent", node=node, run_id=run.run_id, until=run.end, detail=detail, batch=len(won))
        return acked

    def offer_time(self, nodes: list[str]) -> None:
        """The time command with this machine's clock to ``nodes``; no ``sent`` or ``expires``: a node whose clock is wrong
        would judge those on that clock. A node drops a time the broker held through an outage (it is stale)."""
        if not nodes:
            return
        now = time.time()
        body = json.dumps({"v": 1, "ts": round(now, 3)}).encode()
        try:
            self.publisher.publish([(self.topics.set(node, Command.TIME), body) for node in nodes], qos=1)
        except NotSent:
            log.debug("time_not_offered", nodes=len(nodes))

    async def time_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.time_every)
            self.offer_time([v.name for v in self.planner.nodes.values() if v.online])

    def _held_schedule(self, node: str) -> dict[str, Any] | None:
        view = self.planner.nodes.get(node)
        return view.schedule if view is not None else None

    async def publish_schedule(self, node: str, body: bytes) -> None:
        """A changed schedule, retained, on the session (the publisher sends only what is not retained)."""
        if self.session is None:
            raise NotSent("not connected to the broker")
        await self.session.publish(self.topics.schedule(node), body, qos=1, retain=True)

    async def publish_events(self, kind: str, events: list[Event]) -> None:
        now = time.time()
        for i in range(0, len(events), EVENT_CHUNK):
            messages = []
            for node, run, detail in events[i:i + EVENT_CHUNK]:
                # RunEvent's fields, written directly (a model per event would hold up a burst); tests check the model.
                event = {"v": 1, "ts": now, "node": node, "run_id": run.run_id, "rule": run.rule, "kind": kind,
                         "action": run.action, "start": run.start, "end": run.end, "instance": self.settings.instance}
                if detail is not None:
                    event["detail"] = detail
                if kind == "backup":
                    # Backup events are published only once the broker acknowledged the command and it was marked sent.
                    event["sent"] = now
                messages.append((self.events_topic, json.dumps(event).encode()))
            try:
                # QoS 1: the telemetry service keeps the history from these and its persistent session
                # queues them while it is away; a QoS 0 event would be lost then.
                acked = self.publisher.publish(messages, qos=1)
            except NotSent:
                return  # not connected: the claim table still holds the record, the history misses it
            acked.add_done_callback(_event_acks)
            await asyncio.sleep(0)  # let commands and other work through
        if kind != "run":
            log.info("run_event", kind=kind, count=len(events), first=events[0][1].run_id, node=events[0][0])

    # -- incoming ------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        self._last_message = time.monotonic()
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            return
        handler = self._node_topics.get(parsed.what)
        if handler is not None:
            handler(self.planner.view(parsed.node), topic, payload)

    def _on_config(self, view: NodeView, topic: str, payload: bytes) -> None:
        tz = parse_tz(payload)
        if tz is not None and tz != view.tz:
            view.tz = tz
            self.planner.replan(view)

    def _on_state(self, view: NodeView, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a removed node's retained state was cleared
        try:
            view.note_state(State.model_validate_json(payload))
        except ValidationError as exc:
            self.errors.report("bad_state", f"{exc.errors()[0]['msg']}", topic=topic, node=view.name)
            return
        self._watch_wake(view)

    def _on_status(self, view: NodeView, topic: str, payload: bytes) -> None:
        came = view.note_status(payload)
        if came:
            self.offer_time([view.name])
            if self.settled.is_set():
                self.planner.came_online(view)
        self._watch_wake(view)

    def _on_clock(self, view: NodeView, topic: str, payload: bytes) -> None:
        self.offer_time([view.name])  # the node's clock is unset; what it sent is only the question

    def _watch_wake(self, view: NodeView) -> None:
        """A node asleep by plan: flag it if it is still asleep a wake grace after the wake it announced."""
        until = view.sleep_until
        if not view.asleep or until is None or self._wake_checks.get(view.name) == until:
            return
        self._wake_checks[view.name] = until
        self._background(self._check_wake(view, until))

    async def _check_wake(self, view: NodeView, until: float) -> None:
        await asyncio.sleep(max(0.0, until + self.settings.wake_grace - time.time()))
        if self._wake_checks.get(view.name) == until:
            del self._wake_checks[view.name]
        if view.asleep and view.sleep_until == until and not view.overslept:
            view.overslept = True
            log.warning("node_overslept", node=view.name, wake=until)
            self.errors.report("overslept", f"{view.name} meant to wake at {until:.0f} and is still asleep",
                               node=view.name)

    def _on_schedule(self, view: NodeView, topic: str, payload: bytes) -> None:
        try:
            schedule = parse_schedule(payload)
        except BadSchedule as exc:
            keeping = f"version {view.schedule['version']}" if view.schedule else "no schedule"
            view.rejected = str(exc)
            self.errors.report("bad_schedule", f"{view.name}: {exc}; keeping {keeping}", topic=topic, node=view.name)
            return
        view.rejected = None
        if schedule == view.schedule:
            return
        view.schedule = schedule
        self.planner.replan(view)
        self._background(self.store.save_schedule(view.name, schedule))

    def _background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- session -------------------------------------------------------------
    async def run(self) -> None:
        """Keep both connections up (each reconnects with backoff) until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.publisher.run())
            group.create_task(self._subscriber())

    async def _subscriber(self) -> None:
        await self.reconnect.run(self._session, down=self._down)

    def _down(self) -> None:
        self.session = None
        self.connected.clear()

    async def _session(self) -> None:
        status = self.topics.service_status(SCHEDULER_SERVICE, self.settings.instance)
        will = Will(status, OFFLINE, qos=1, retain=True)
        client_id = f"nodefleet-scheduler-{self.settings.instance}"[:64]
        async with Client(self.address, client_id=client_id, will=will, keepalive=self.settings.keepalive) as mqtt:
            for kind in self._node_topics:
                await mqtt.subscribe(self.topics.every_node(kind), qos=NODE_TOPICS[kind].qos)
            await mqtt.subscribe(self.topics.requests(SCHEDULER_SERVICE), qos=1)
            async with presence(mqtt, status, self.errors):
                self._last_message = time.monotonic()
                self.session = mqtt
                self.connected.set()
                self.reconnect.up()
                request_handlers = handlers(self.planner.nodes, self.changes)
                requests_prefix = self.topics.requests(SCHEDULER_SERVICE)[:-1]
                async for message in mqtt.messages:
                    topic = message.topic
                    if topic.startswith(requests_prefix):
                        action = self.topics.request_action(topic)
                        self._background(answer(mqtt, message.payload, request_handlers, action, self.errors))
                    else:
                        self.on_message(topic, message.payload)

    async def settle(self) -> None:
        """Wait until the retained messages stopped arriving (the nodes' current state is known)."""
        await self.connected.wait()
        await self.publisher.connected.wait()
        started = time.monotonic()
        while time.monotonic() - self._last_message < SETTLE and time.monotonic() - started < SETTLE_MAX:
            await asyncio.sleep(0.05)
        self.settled.set()


async def serve(settings: SchedulerSettings, *, ready: asyncio.Event | None = None) -> None:
    """Run the scheduler until cancelled."""
    log.info("scheduler_starting", broker=BrokerAddress.parse(settings.mqtt_url).url, instance=settings.instance,
             grace=settings.grace)
    store = await Store.open(settings.database_url, settings.instance, max_delay=settings.db_retry_max)
    scheduler = Scheduler(settings, store)
    pacer = GcPacer()
    for node, schedule in (await store.schedules()).items():
        scheduler.planner.view(node).schedule = schedule
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            await scheduler.settle()
            for view in scheduler.planner.nodes.values():
                if view.generation == 0:
                    scheduler.planner.replan(view)  # known only from the database
            pacer.start()
            scheduler.planner.on_idle = pacer.idle
            group.create_task(scheduler.planner.run())
            group.create_task(_prune_loop(store, settings.history_days))
            group.create_task(scheduler.time_loop())
            log.info("scheduler_ready", nodes=len(scheduler.planner.nodes))
            if ready is not None:
                ready.set()
    finally:
        pacer.stop()
        await store.close()
        log.info("scheduler_stopped", **vars(scheduler.planner.counts))


async def _prune_loop(store: Store, days: int) -> None:
    while True:
        with contextlib.suppress(Exception):
            await store.prune(days)
        await asyncio.sleep(3600)
