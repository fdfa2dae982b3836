"""The fleet request/reply envelope and rate-limited error events, over a :class:`nodefleet.wire.Client`.

Requests go to ``Topics.request(service, action)`` as a FleetRequest carrying
``transaction`` and ``reply_to``; the service answers on ``reply_to`` with a
FleetReply.  Error events go to ``Topics.errors()``, at most ``burst`` per
code each ``window`` seconds; when a window closes, a summary event counts those left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from . import pg_errors
from .contracts import OFFLINE, ONLINE, ErrorEvent, FleetReply, FleetRequest, Topics
from .errors import RequestError, StorageUnavailable, WireError
from .logging import get_logger
from .wire import Client, Message

log = get_logger(__name__)


__all__ = ["ErrorReporter", "Handler", "RequestError", "Requester", "TypedHandler", "answer", "presence", "replies_to",
           "typed"]


class Requester:
    """Sends fleet requests from one connected client and waits for their replies."""

    def __init__(self, client: Client, topics: Topics, *, client_id: str) -> None:
        self._client = client
        self._topics = topics
        self.reply_topic = topics.reply(client_id)
        self._waiting: dict[str, asyncio.Future[FleetReply]] = {}

    async def start(self) -> None:
        await self._client.subscribe(self.reply_topic, qos=1)

    def feed(self, message: Message) -> bool:
        """Route a received message to its waiting request; True if it was a reply."""
        if message.topic != self.reply_topic:
            return False
        try:
            reply = FleetReply.model_validate_json(message.payload)
        except ValidationError as exc:
            log.warning("bad_reply", error=str(exc))
            return True
        future = self._waiting.pop(reply.transaction, None)
        if future is not None and not future.done():
            future.set_result(reply)
        return True

    async def request(self, service: str, action: str, data: BaseModel | dict[str, Any], *, timeout: float = 5.0) -> Any:
        """Send one request and return the reply's ``data``; raise RequestError on error or timeout."""
        transaction = uuid.uuid4().hex[:16]
        body = data.model_dump(mode="json", by_alias=True) if isinstance(data, BaseModel) else data
        envelope = FleetRequest(transaction=transaction, reply_to=self.reply_topic, data=body)
        future: asyncio.Future[FleetReply] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        await self._client.publish(self._topics.request(service, action), envelope.model_dump_json(by_alias=True), qos=1)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise RequestError(
                f"no answer from the {service} service within {timeout:g} s: is it running on this broker?"
            ) from exc
        finally:
            self._waiting.pop(transaction, None)
        if reply.status != "ok":
            raise RequestError(reply.error or "the service answered with an error")
        return reply.data


@contextlib.asynccontextmanager
async def replies_to(client: Client, topics: Topics, *, client_id: str) -> AsyncIterator[Requester]:
    """A started Requester fed by every message ``client`` receives, until the block ends.

    For a connection that subscribes to nothing but its replies (a command, a benchmark's operator); a client
    that also reads other topics feeds its own Requester with :meth:`Requester.feed`.
    """
    requester = Requester(client, topics, client_id=client_id)
    await requester.start()

    async def feed() -> None:
        async for message in client.messages:
            requester.feed(message)

    reader = asyncio.create_task(feed())
    try:
        yield requester
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, WireError):
            await reader


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class TypedHandler:
    """A request handler over models: ``async def f(request: SomeRequest) -> SomeAnswer``.

    Called with the request's raw ``data``: validates it into the function's
    parameter model and dumps what the function returns as its annotated type
    (a model, a list of models, a dict), so a handler never validates or dumps
    by hand, and the models stay readable for the generated topic document.
    """

    fn: Callable[[Any], Awaitable[Any]]
    request_model: type[BaseModel]
    answer_type: Any
    _request: TypeAdapter[Any] = field(repr=False)
    _answer: TypeAdapter[Any] = field(repr=False)

    async def __call__(self, data: dict[str, Any]) -> Any:
        result = await self.fn(self._request.validate_python(data))
        return self._answer.dump_python(result, mode="json", by_alias=True)


def typed(fn: Callable[[Any], Awaitable[Any]]) -> TypedHandler:
    """Wrap a handler annotated with its request model and its answer type (see TypedHandler)."""
    hints = typing.get_type_hints(fn)
    answer_type = hints.pop("return", Any)
    if len(hints) != 1:
        raise TypeError(f"{fn.__qualname__}: a typed handler takes exactly one annotated request model")
    (request_model,) = hints.values()
    if not (isinstance(request_model, type) and issubclass(request_model, BaseModel)):
        raise TypeError(f"{fn.__qualname__}: the request parameter must be a pydantic model")
    return TypedHandler(fn, request_model, answer_type, TypeAdapter(request_model), TypeAdapter(answer_type))


async def answer(client: Client, payload: bytes, handlers: Mapping[str, Handler], action: str, errors: ErrorReporter) -> None:
    """Answer one fleet request with ``handlers[action]``; every failure becomes an error reply."""
    try:
        request = FleetRequest.model_validate_json(payload)
    except ValidationError as exc:
        errors.report("bad_request", f"request is not a valid envelope: {exc.errors()[0]['msg']}")
        return
    handler = handlers.get(action)
    try:
        if handler is None:
            raise LookupError(f"unknown action {action!r}; known: {', '.join(sorted(handlers))}")
        reply = FleetReply(transaction=request.transaction, status="ok", data=await handler(request.data))
    except (ValidationError, LookupError, ValueError) as exc:
        errors.report("bad_request", f"{action}: {exc}")
        reply = FleetReply(transaction=request.transaction, status="error", error=str(exc)[:1024])
    except (StorageUnavailable, *pg_errors.UNREACHABLE) as exc:
        # Not the request's fault and not a bug: the asker is told to try again, not shown an internal error.
        errors.report("database_unavailable", f"{action}: {exc}")
        reply = FleetReply(transaction=request.transaction, status="error",
                           error=f"database unavailable ({type(exc).__name__}: {exc}): the {action} was not "
                                 f"carried out; try again once the service's PostgreSQL is back"[:1024])
    except Exception as exc:  # an unexpected failure still gets an answer
        log.exception("request_failed", action=action)
        reply = FleetReply(transaction=request.transaction, status="error", error=f"internal error: {exc}"[:1024])
    await client.publish(request.reply_to, reply.model_dump_json(), qos=1)


@dataclass
class _Bucket:
    window_start: float
    sent: int = 0
    suppressed: int = 0
    last: tuple[str, str | None, str | None] | None = None  # detail, topic, node of the last one left out


@dataclass
class ErrorReporter:
    """Counts every rejection, logs it, and publishes rate-limited ErrorEvents.

    At most ``burst`` events per code each ``window`` seconds; when a window
    in which some were left out closes, one summary event of that code says
    how many (``suppressed``) and quotes the last of them, so a storm is
    reported when it happens, not with the next event minutes later.
    ``report`` never blocks and never raises: events wait in a bounded queue
    drained by ``run``; when it is full the event is counted as suppressed.
    """

    service: str
    topics: Topics
    burst: int = 10
    window: float = 10.0
    counts: dict[str, int] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _queue: asyncio.Queue[ErrorEvent] = field(default_factory=lambda: asyncio.Queue(maxsize=100))
    _wake: asyncio.Event = field(default_factory=asyncio.Event)  # an event queued, or a window began leaving some out

    def report(self, code: str, detail: str, *, topic: str | None = None, node: str | None = None) -> None:
        self.counts[code] = self.counts.get(code, 0) + 1
        self._wake.set()
        now = time.time()
        bucket = self._buckets.setdefault(code, _Bucket(now))
        if now - bucket.window_start >= self.window:
            self._close_window(code, bucket, now)
        if bucket.sent >= self.burst:
            # A flood of bad input must not flood the log either: the count keeps it.
            bucket.suppressed += 1
            bucket.last = (detail, topic, node)
            log.debug("rejected", code=code, detail=detail, topic=topic, node=node)
            return
        log.warning("rejected", code=code, detail=detail, topic=topic, node=node)
        if self._enqueue(self._event(now, code, detail, topic, node, 0)):
            bucket.sent += 1
        else:
            bucket.suppressed += 1
            bucket.last = (detail, topic, node)

    def close_windows(self, now: float | None = None) -> float | None:
        """Summarise every window that has ended with events left out; seconds until the next one ends (None:
        no window has anything left out)."""
        now = time.time() if now is None else now
        wait = None
        for code, bucket in self._buckets.items():
            if not bucket.suppressed:
                continue
            left = bucket.window_start + self.window - now
            if left <= 0:
                self._close_window(code, bucket, now)
            else:
                wait = left if wait is None else min(wait, left)
        return wait

    def _close_window(self, code: str, bucket: _Bucket, now: float) -> None:
        """Start a new window; one summary event for what the old one left out."""
        if bucket.suppressed and bucket.last is not None:
            detail, topic, node = bucket.last
            summary = self._event(now, code, f"{bucket.suppressed} more {code} event(s) left out in the last "
                                  f"{self.window:g} s; the last: {detail}", topic, node, bucket.suppressed)
            log.warning("rejected_summary", code=code, suppressed=bucket.suppressed, detail=detail)
            if not self._enqueue(summary):
                return  # the queue is full: the count waits for the next window's close
        bucket.window_start, bucket.sent, bucket.suppressed, bucket.last = now, 0, 0, None

    def _event(self, now: float, code: str, detail: str, topic: str | None, node: str | None,
               suppressed: int) -> ErrorEvent:
        try:
            return ErrorEvent(ts=now, service=self.service, code=code, detail=detail[:1024],
                              topic=topic[:256] if topic else None, node=node, suppressed=suppressed)
        except ValidationError:  # a node name that is itself the bad input
            return ErrorEvent(ts=now, service=self.service, code=code, detail=detail[:1024], suppressed=suppressed)

    def _enqueue(self, event: ErrorEvent) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self, client: Client) -> None:
        """Publish queued events, and each window's summary when it closes, until cancelled."""
        topic = self.topics.errors()
        while True:
            while not self._queue.empty():
                await client.publish(topic, self._queue.get_nowait().model_dump_json(), qos=0)
            self._wake.clear()
            wait = self.close_windows()
            if self._queue.empty():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)


@contextlib.asynccontextmanager
async def presence(client: Client, status_topic: str, errors: ErrorReporter) -> AsyncIterator[None]:
    """A connected service: retained ``online`` now, ``offline`` when stopped, error events meanwhile.

    The client's last will publishes ``offline`` after a crash; a clean stop
    (cancellation) says goodbye itself.
    """
    await client.publish(status_topic, ONLINE, qos=1, retain=True)
    reporter = asyncio.create_task(errors.run(client))
    try:
        yield
    except asyncio.CancelledError:
        with contextlib.suppress(WireError, TimeoutError):
            await asyncio.wait_for(client.publish(status_topic, OFFLINE, qos=1, retain=True), 1.0)
        raise
    finally:
        reporter.cancel()


# -- the request plane on FastStream (an experiment: see services/telemetry/README.md) ---------------------------


class _FastStreamPublisher:
    """What ``answer``, ``presence`` and ``ErrorReporter.run`` need of a client, over a FastStream MQTTBroker."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    async def publish(self, topic: str, payload: str | bytes | None = None, *, qos: int = 0,
                      retain: bool = False) -> None:
        from zmqtt import QoS

        body = payload.encode() if isinstance(payload, str) else (payload or b"")
        await self._broker.publish(body, topic, qos=QoS(qos), retain=retain)


async def _raw_body(message: Any) -> bytes:
    # FastStream JSON-decodes anything that looks like JSON; the envelope is ours to validate (and report).
    return message.body


async def serve_on_faststream(address: Any, *, client_id: str, service: str, topics: Topics,
                              handlers: Mapping[str, Handler], errors: ErrorReporter, status_topic: str,
                              shared_group: str | None = None, ready: asyncio.Event | None = None,
                              max_workers: int = 64) -> None:
    """Answer ``service``'s fleet requests with ``handlers`` on a FastStream MQTTBroker until cancelled.

    The same envelope, handlers, error events and retained presence as the
    ``nodefleet.wire`` path (``answer`` does the work); FastStream carries the
    messages: MQTT 3.1.1 (it defaults to 5.0, which hangs on the embedded
    broker), one subscriber on ``<fleet>/<service>/request/{action}``, the raw
    body (see ``_raw_body``), up to ``max_workers`` requests at once.
    Reconnecting is FastStream's (zmqtt's) own policy, not ``wire.Backoff``.
    Needs the ``faststream[mqtt]`` extra, imported only here.
    """
    from faststream import Path
    from faststream.mqtt import MQTTBroker, QoS
    from zmqtt import Will as ZWill

    will = ZWill(topic=status_topic, payload=OFFLINE.encode(), qos=QoS.AT_LEAST_ONCE, retain=True)
    broker = MQTTBroker(host=address.host, port=address.port, client_id=client_id, version="3.1.1", will=will,
                        clean_session=True, logger=None, security=_login(address))
    action_filter = topics.requests(service).rsplit("/", 1)[0] + "/{action}"

    @broker.subscriber(action_filter, qos=QoS.AT_LEAST_ONCE, shared=shared_group, no_reply=True,
                       max_workers=max_workers, decoder=_raw_body)
    async def on_request(body: bytes, action: str = Path()) -> None:
        await answer(client, body, handlers, action, errors)

    client = _FastStreamPublisher(broker)
    await broker.start()
    try:
        async with presence(client, status_topic, errors):  # type: ignore[arg-type]
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
    finally:
        await broker.stop()


def _login(address: Any) -> Any:
    if not address.username:
        return None
    from faststream.security import SASLPlaintext

    return SASLPlaintext(username=address.username, password=address.password or "")
