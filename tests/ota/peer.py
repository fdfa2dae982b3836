"""A TEST PEER for the node side of docs/ota.md, written with the contract models (Offer, Want, Progress,
decode_frame).  It is not the firmware's receiver (that is firmware/ota.py and its normal-mode wiring);
it does what the protocol asks of a node, simply, so the service can be tested on a real broker:

- takes the retained offer, checks its tag with the node's key, says ``downloading``;
- subscribes to the offer's stream and its own ``ota/data``, sends a Want (fresh session, window);
- checks each frame (release id, table chunk against the offer, block against the table), wants again after
  every ``window / 2`` frames handled and after 2 s without a frame while units are missing;
- complete: ``downloaded``, ``verified`` (whole sha256), ``updating``, then ``updated`` (or the outcome it was
  told to have: ``failed`` / ``rolled_back``);
- an empty retained offer withdraws the download; the offer of the release it runs, again: ``updated`` again.

Also :class:`ProvisionerStub`: answers ``provisioner/list`` with registered nodes, so the service can learn its
targets over MQTT without running the provisioner.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from nodefleet.contracts.ota import (
    DIGEST_SIZE,
    KIND_TABLE,
    FrameError,
    Offer,
    Progress,
    Want,
    bitmap,
    decode_frame,
)
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE, DeviceRow, ListRequest
from nodefleet.contracts.topics import OtaTopic, Topics
from nodefleet.fleet import ErrorReporter, answer, typed
from nodefleet.wire import BrokerAddress, Client, WireError

STALL = 2.0


@dataclass
class Download:
    offer: Offer
    session: str
    table: dict[int, bytes] = field(default_factory=dict)
    blocks: dict[int, bytes] = field(default_factory=dict)
    got: int = 0
    since_want: int = 0
    last_frame: float = field(default_factory=time.monotonic)
    done: bool = False

    def have(self) -> set[int]:
        return set(self.table) | {len(self.offer.table) + i for i in self.blocks}

    def complete(self) -> bool:
        return len(self.table) == len(self.offer.table) and len(self.blocks) == self.offer.blocks


class Peer:
    """One test node: ``run()`` until cancelled; ``states`` lists what it reported."""

    def __init__(self, name: str, *, url: str, topics: Topics, key: bytes, window: int = 8, delay: float = 0.0,
                 outcome: str = "updated", trial: asyncio.Event | None = None) -> None:
        self.name, self.url, self.topics, self.key = name, url, topics, key
        self.window, self.delay, self.outcome = window, delay, outcome
        self.trial = trial
        """Set by the test when the trial boot after ``updating`` is over (default: at once)."""
        self.download: Download | None = None
        self.states: list[str] = []
        self.received: Counter[str] = Counter()
        """Payload bytes received, by topic kind: ``shared`` and ``repair``."""
        self.bad = 0
        self.image: bytes | None = None
        self.client: Client | None = None
        self.offers = 0
        self.withdrawn = 0

    @property
    def state(self) -> str | None:
        return self.states[-1] if self.states else None

    async def run(self) -> None:
        client_id = f"peer-{self.name}-{uuid.uuid4().hex[:6]}"
        async with Client(BrokerAddress.parse(self.url), client_id=client_id) as client:
            self.client = client
            offer_topic, data_topic = self.topics.node_ota_inbox(self.name)
            await client.subscribe(offer_topic, qos=1)
            await client.subscribe(data_topic, qos=0)
            stall = asyncio.create_task(self._stall_timer())
            try:
                async for message in client.messages:
                    if message.topic == offer_topic:
                        await self._on_offer(message.payload)
                    elif message.topic == data_topic:
                        await self._on_frame(message.payload, "repair")
                    elif self.download is not None and message.topic == self.download.offer.stream:
                        await self._on_frame(message.payload, "shared")
            finally:
                stall.cancel()

    async def _report(self, state: str, **extra: object) -> None:
        self.states.append(state)
        d = self.download
        size = d.offer.size if d else 0
        got = sum(len(b) for b in d.blocks.values()) if d else 0
        progress = Progress(release=d.offer.release if d else "0.0.0", state=state, bytes=min(got, size), size=size,
                            bad=self.bad, rollout=d.offer.rollout if d else None, ts=time.time(), **extra)
        assert self.client is not None
        await self.client.publish(self.topics.ota(self.name, OtaTopic.PROGRESS),
                                  progress.model_dump_json(exclude_none=True), qos=1)

    async def _want(self) -> None:
        d = self.download
        assert d is not None and self.client is not None
        d.since_want = 0
        want = Want(release=d.offer.release, session=d.session, got=d.got, window=self.window,
                    have=bitmap(d.have(), d.offer.units()))
        await self.client.publish(self.topics.ota(self.name, OtaTopic.WANT), want.model_dump_json(), qos=0)

    async def _on_offer(self, payload: bytes) -> None:
        assert self.client is not None
        if not payload:
            if self.download is not None:
                self.withdrawn += 1
                with contextlib.suppress(WireError):
                    await self.client.unsubscribe(self.download.offer.stream)
                if not self.download.done:
                    self.download = None
            return
        offer = Offer.model_validate_json(payload)
        if self.download is not None and self.download.offer.sha256 == offer.sha256:
            if self.state == "updated":  # it runs this release: the service missed the word (firmware/normal.py)
                await self._report("updated")
            return  # the same offer again (republished after a restart)
        self.offers += 1
        self.download = Download(offer=offer, session=uuid.uuid4().hex[:12])
        if not offer.verify(self.key, self.name):
            await self._report("failed", code="bad_tag", reason="the offer's tag does not match this node's key")
            return
        await self.client.subscribe(offer.stream, qos=0)
        await self._report("downloading")
        await self._want()

    async def _on_frame(self, payload: bytes, kind: str) -> None:
        d = self.download
        if d is None or d.done:
            return
        self.received[kind] += len(payload)
        try:
            frame = decode_frame(payload)
        except FrameError:
            self.bad += 1
            return
        if frame.release_id != bytes.fromhex(d.offer.sha256)[:8]:
            return  # another release's stream: ignored
        d.got += 1
        d.since_want += 1
        d.last_frame = time.monotonic()
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow flash write
        if frame.kind == KIND_TABLE:
            if frame.index < len(d.offer.table) and hashlib.sha256(frame.data).hexdigest() == d.offer.table[frame.index]:
                d.table[frame.index] = frame.data
            else:
                self.bad += 1
        else:
            per_chunk = d.offer.block_size // DIGEST_SIZE
            chunk = d.table.get(frame.index // per_chunk)
            if chunk is not None and frame.index < d.offer.blocks:
                at = (frame.index % per_chunk) * DIGEST_SIZE
                if hashlib.sha256(frame.data).digest() == chunk[at:at + DIGEST_SIZE]:
                    d.blocks[frame.index] = frame.data
                else:
                    self.bad += 1
        if d.complete():
            await self._finish()
        elif d.since_want >= self.window // 2:
            await self._want()
        if d.got % 8 == 0 and not d.done:
            await self._report("downloading", rate=1e6)

    async def _finish(self) -> None:
        d = self.download
        assert d is not None
        d.done = True
        await self._want()  # the last want: the stream lets this member go
        await self._report("downloaded")
        image = b"".join(d.blocks[i] for i in range(d.offer.blocks))
        if hashlib.sha256(image).hexdigest() != d.offer.sha256:
            await self._report("failed", code="bad_image", reason="the image does not match its sha256")
            return
        self.image = image
        await self._report("verified")
        await self._report("updating")
        if self.trial is not None:
            await self.trial.wait()
        if self.outcome == "updated":
            await self._report("updated")
        else:
            await self._report(self.outcome, code="self_test", reason="the new app failed its self-test")

    async def _stall_timer(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            d = self.download
            if d is not None and not d.done and time.monotonic() - d.last_frame > STALL:
                d.last_frame = time.monotonic()
                with contextlib.suppress(WireError):
                    await self._want()


class ProvisionerStub:
    """Answers ``provisioner/list`` from a fixed list of nodes (name -> home): a stand-in for the provisioner."""

    def __init__(self, *, url: str, topics: Topics, nodes: dict[str, str], status: str = "provisioned") -> None:
        self.url, self.topics, self.nodes, self.status = url, topics, nodes, status

    def rows(self, request: ListRequest) -> list[DeviceRow]:
        return [DeviceRow(node=node, home_id=home, device_name=node, status=self.status, config_version=1,
                          created="2020-01-01T00:00:00Z")
                for node, home in self.nodes.items()
                if (request.home_id is None or home == request.home_id)
                and (request.status is None or request.status == self.status)]

    async def run(self) -> None:
        errors = ErrorReporter("provisioner-stub", self.topics)

        @typed
        async def list_(request: ListRequest) -> list[DeviceRow]:
            return self.rows(request)

        async with Client(BrokerAddress.parse(self.url), client_id=f"prov-stub-{uuid.uuid4().hex[:6]}") as client:
            await client.subscribe(self.topics.requests(PROVISIONER_SERVICE), qos=1)
            async for message in client.messages:
                await answer(client, message.payload, {"list": list_}, self.topics.request_action(message.topic),
                             errors)
