"""The ota service's state: releases, open rollouts, one stream per release, and what each message changes.

No MQTT here: the app hands in ``publish`` (retained offers and withdrawals on
the session) and reads frames out of :attr:`Engine.streams`; wants, progress,
ticks and the operator's requests come in as models.  Every change of a
rollout is written to the store before its offers go out, and a withdrawal
goes out before it is written (but an updated node's after), so a service
killed in between leaves at most an offer that :meth:`Engine.reconcile`
publishes again at the next start.

A change that could not be written (PostgreSQL away) has already moved the
rollout here: :attr:`Engine.stale` is set, and the app starts a new term from
the tables, as after a restart.  What the tables then miss comes back from the
nodes: the standing offers are published again, and a node that already runs
the offered release answers ``updated`` (docs/ota.md, "PostgreSQL away").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nodefleet.contracts.ota import (
    FINAL_STATES,
    HistoryRow,
    LanOffer,
    Offer,
    Progress,
    ReleaseInfo,
    ReleaseUpload,
    RolloutStart,
    RolloutView,
    TargetView,
    Want,
    device_key,
    table_chunks,
)
from nodefleet.contracts.topics import OtaTopic, Topics
from nodefleet.errors import InputError, StorageUnavailable, WireError
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger
from nodefleet.ota_release import Release, decode

from .rollout import OPEN_STATES, Actions, Policy, Rollout, RolloutError, Transition, parse_stages
from .store import OtaStore, ReleaseConflict
from .stream import Stream, StreamError

log = get_logger(__name__)

KEPT = OPEN_STATES | {"halted"}
"""Rollouts the service carries (a halted one can still be resumed or aborted)."""
DONE_DOWNLOADING = frozenset({"downloaded", "verified", "updating"}) | FINAL_STATES


class NoMasterKey(InputError):
    """No OTA master key is set: no offer can be tagged."""


class UnknownRollout(InputError, LookupError):
    """No rollout of that id."""


@dataclass
class Live:
    """What a node last said about its download (not stored: the next progress says it again)."""

    bytes: int = 0
    size: int = 0
    rate: float | None = None
    bad: int = 0


Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish a retained message on the session (an offer, or b"" to withdraw one)."""


class Engine:
    def __init__(self, *, store: OtaStore, topics: Topics, errors: ErrorReporter, master: bytes | None,
                 publish: Publish, max_downloads: int, silence: float, return_deadline: float, gather: float = 0.0,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.topics = topics
        self.errors = errors
        self.master = master
        self.publish = publish
        self.max_downloads = max_downloads
        self.silence = silence
        self.return_deadline = return_deadline
        self.gather = gather
        self.wake = wake
        self.releases: dict[str, Release] = {}
        self.rollouts: dict[str, Rollout] = {}
        """Open rollouts, and those that ended while this instance ran."""
        self.of_node: dict[str, str] = {}
        """Node -> the kept rollout it is a target of (one at a time)."""
        self.streams: dict[str, Stream] = {}
        self.live: dict[str, Live] = {}
        self.offline: dict[str, float] = {}
        """Node -> when (monotonic) its status said offline: a stream's gather does not wait for it."""
        self.lock = asyncio.Lock()
        self.stale = asyncio.Event()
        """Set when a change made here could not be written: these rollouts are ahead of the tables."""

    # -- start ----------------------------------------------------------------
    async def load(self) -> None:
        """Read the open rollouts back (after a restart, even kill -9) and carry on with them."""
        for rollout in await self.store.open_rollouts():
            await self._release(rollout.release)
            self.rollouts[rollout.id] = rollout
            for node in rollout.targets:
                self.of_node[node] = rollout.id
        log.info("ota_rollouts_loaded", rollouts=[r.id for r in self.rollouts.values()])

    async def reconcile(self) -> None:
        """Publish every standing offer again (idempotent: the same tag); run at each (re)connect."""
        if self.master is None:
            if self.of_node:
                self.errors.report("no_master_key", "open rollouts, but no OTA master key: offers cannot be tagged; "
                                   "set NODEFLEET_OTA_MASTER_KEY (the provisioner's) and restart the ota service")
            return
        for rollout in list(self.rollouts.values()):
            if rollout.state not in KEPT:
                continue
            await asyncio.gather(*(self._offer(rollout, t.node) for t in rollout.targets.values()
                                   if t.offered and t.state not in FINAL_STATES))

    # -- releases -------------------------------------------------------------
    async def _release(self, version: str) -> Release:
        release = self.releases.get(version)
        if release is None:
            release = self.releases[version] = await self.store.release(version)
        return release

    async def add_release(self, upload: ReleaseUpload) -> ReleaseInfo:
        try:
            data = base64.b64decode(upload.file, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"the release file is not valid base64: {exc}") from exc
        release = decode(data)  # ReleaseError (an InputError) says what is damaged
        m = release.manifest
        now = time.time()
        if not await self.store.add_release(release, now=now):
            raise ReleaseConflict(f"release {m.version} is already kept, with this very image: nothing to do "
                                  f"(nodefleet ota releases lists the kept ones)")
        self.releases[m.version] = release
        log.info("ota_release_added", version=m.version, size=m.size, blocks=len(m.blocks))
        return ReleaseInfo(version=m.version, sha256=m.sha256, format=m.format, size=m.size,
                           block_size=m.block_size, blocks=len(m.blocks), files=len(m.files), created=now)

    async def lan_offer(self, request: LanOffer) -> Offer:
        """The offer of a kept release for one node's LAN upload: tagged with its key as a rollout's would be."""
        if self.master is None:
            raise NoMasterKey("the ota service has no OTA master key, so it cannot tag an upload for the node: set "
                              "NODEFLEET_OTA_MASTER_KEY (the same as the provisioner's) and restart it")
        manifest = (await self._release(request.release)).manifest
        log.info("ota_lan_offer", node=request.node, release=request.release, force=request.force)
        return manifest.offer(node=request.node, key=device_key(self.master, request.node), stream="lan",
                              force=request.force)

    async def list_releases(self) -> list[ReleaseInfo]:
        return [ReleaseInfo(**row) for row in await self.store.releases()]

    # -- rollouts: the operator -----------------------------------------------
    async def check_start(self, request: RolloutStart) -> None:
        """What can be refused before the targets are looked up: no key, an unknown release, bad stages."""
        if self.master is None:
            raise NoMasterKey("the ota service has no OTA master key, so it cannot tag offers for the nodes: set "
                              "NODEFLEET_OTA_MASTER_KEY (the same as the provisioner's) and restart it")
        await self._release(request.release)
        parse_stages(request.stages)

    async def start(self, request: RolloutStart, targets: list[str]) -> RolloutView:
        await self.check_start(request)
        async with self.lock:
            rollout_id = request.id or f"{request.release}-{uuid.uuid4().hex[:6]}"
            if rollout_id in self.rollouts or await self.store.rollout(rollout_id) is not None:
                raise RolloutError(f"a rollout {rollout_id} exists already: see nodefleet ota status {rollout_id}")
            release = await self._release(request.release)
            busy = sorted(node for node in targets if node in self.of_node)
            if busy:
                raise RolloutError(f"{', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''} already in rollout "
                                   f"{self.of_node[busy[0]]}: abort it first (nodefleet ota rollout abort "
                                   f"{self.of_node[busy[0]]}) or leave those nodes out")
            policy = Policy(canary=request.canary, stages=parse_stages(request.stages),
                            max_failures=request.max_failures, min_sample=request.min_sample,
                            return_deadline=self.return_deadline, force=request.force)
            now = time.time()
            rollout, actions = Rollout.start(id=rollout_id, release=release.manifest.version, targets=targets,
                                             policy=policy, now=now)
            # The start is the first transition of every target.
            actions.transitions[:0] = [Transition(node, "queued") for node in rollout.targets]
            await self.store.save_rollout(rollout, now=now)
            self.rollouts[rollout.id] = rollout
            for node in rollout.targets:
                self.of_node[node] = rollout.id
                self.live.pop(node, None)
            await self._apply(rollout, actions, now)
            log.info("ota_rollout_started", rollout=rollout.id, release=rollout.release, targets=len(targets),
                     stages=[len(s) for s in rollout.stages])
            return self.view(rollout)

    async def pause(self, rollout_id: str) -> RolloutView:
        return await self._operate(rollout_id, lambda r, now: r.pause())

    async def resume(self, rollout_id: str) -> RolloutView:
        if self.master is None:
            raise NoMasterKey("no OTA master key: set NODEFLEET_OTA_MASTER_KEY and restart the ota service")
        return await self._operate(rollout_id, lambda r, now: r.resume(now))

    async def abort(self, rollout_id: str) -> RolloutView:
        return await self._operate(rollout_id, lambda r, now: r.abort())

    async def _operate(self, rollout_id: str, change: Callable[[Rollout, float], Actions]) -> RolloutView:
        async with self.lock:
            rollout = await self._rollout(rollout_id)
            now = time.time()
            await self._apply(rollout, change(rollout, now), now)
            log.info("ota_rollout_changed", rollout=rollout.id, state=rollout.state)
            return self.view(rollout)

    async def _rollout(self, rollout_id: str) -> Rollout:
        rollout = self.rollouts.get(rollout_id)
        if rollout is None:
            rollout = await self.store.rollout(rollout_id)
            if rollout is None:
                raise UnknownRollout(f"no rollout {rollout_id}: nodefleet ota status lists the open ones")
            await self._release(rollout.release)
            self.rollouts[rollout.id] = rollout
        return rollout

    async def status(self, rollout_id: str | None) -> list[RolloutView]:
        if rollout_id is not None:
            return [self.view(await self._rollout(rollout_id))]
        return [self.view(r) for r in self.rollouts.values() if r.state in KEPT]

    async def history(self, node: str, limit: int) -> list[HistoryRow]:
        return [HistoryRow(**row) for row in await self.store.history(node, limit=limit)]

    # -- the nodes --------------------------------------------------------------
    def target_of(self, node: str) -> Rollout | None:
        rollout_id = self.of_node.get(node)
        return self.rollouts.get(rollout_id) if rollout_id else None

    def on_want(self, node: str, want: Want, *, now: float) -> str:
        """A node's want: into its release's stream (InputError when it is not one we offered it)."""
        rollout = self.target_of(node)
        if rollout is None:
            raise InputError(f"{node} is not a target of an open rollout")
        if want.release != rollout.release:
            raise InputError(f"{node} wants release {want.release}; its rollout {rollout.id} offers {rollout.release}")
        if not rollout.targets[node].offered:
            raise InputError(f"{node} wants {want.release}, which is not offered to it (rollout {rollout.id} "
                             f"is {rollout.state})")
        stream = self.streams.get(rollout.release)
        if stream is None:
            release = self.releases[rollout.release]
            blocks = len(release.manifest.blocks)
            stream = self.streams[rollout.release] = Stream(
                rollout.release, table=table_chunks(blocks, release.manifest.block_size), blocks=blocks,
                max_members=self.max_downloads, silence=self.silence, gather=self.gather)
        expected = None
        if not stream.members or stream.held_until > now:
            # The gather ends once every node this release is offered to and still downloading, and not
            # offline for longer than the gather, has asked: a single node, or a stage that is all online,
            # waits no longer. (A node restarting into its download mode is offline for a moment: it counts.)
            gone = now - self.gather
            expected = [n for r in self.rollouts.values() if r.release == rollout.release and r.state in KEPT
                        for n, t in r.targets.items()
                        if t.offered and t.state not in DONE_DOWNLOADING and self.offline.get(n, now) >= gone]
        try:
            placed = stream.want(node, want, now=now, expected=expected)
        except StreamError as exc:
            raise InputError(str(exc)) from exc
        if placed == "member":
            self.wake()
        return placed

    def on_status(self, node: str, online: bool, *, now: float) -> None:
        if online:
            self.offline.pop(node, None)
        else:
            self.offline.setdefault(node, now)

    async def on_progress(self, node: str, progress: Progress) -> None:
        rollout = self.target_of(node)
        if rollout is None and progress.state == "updated":
            # No open rollout has it, so no offer may stand for it: one left by a stop after its rollout's last
            # write (the node says ``updated`` at every connect while it stands) goes now.
            await self._send(self.topics.ota(node, OtaTopic.OFFER), b"", node)
            return
        if rollout is None:
            raise InputError(f"progress from {node}, which is not a target of an open rollout")
        if progress.release != rollout.release:
            raise InputError(f"{node} reports release {progress.release}; its rollout {rollout.id} offers "
                             f"{rollout.release}")
        live = self.live.setdefault(node, Live())
        live.bytes, live.size, live.rate, live.bad = progress.bytes, progress.size, progress.rate, progress.bad
        if progress.state in DONE_DOWNLOADING:
            self._leave(rollout.release, node)
        async with self.lock:
            now = time.time()
            actions = rollout.report(node, progress.state, now=now, code=progress.code, reason=progress.reason)
            await self._apply(rollout, actions, now)

    async def tick(self) -> None:
        """Deadlines and stages; then let the pump look again (a member may have fallen silent)."""
        async with self.lock:
            now = time.time()
            for rollout in list(self.rollouts.values()):
                if rollout.state in KEPT:
                    await self._apply(rollout, rollout.tick(now), now)
        self.wake()

    # -- carrying out ---------------------------------------------------------
    async def _apply(self, rollout: Rollout, actions: Actions, now: float) -> None:
        # A withdrawal goes out before it is written (a pause must not leave an offer standing), except an
        # updated node's: that one after, or a service stopped in between would have lost the node's word
        # and the offer that makes the node say it again.
        heard = [node for node in actions.withdraw if rollout.targets[node].state == "updated"]
        for node in actions.withdraw:
            self._leave(rollout.release, node)
            if node not in heard:
                await self._send(self.topics.ota(node, OtaTopic.OFFER), b"", node)
        if actions.transitions or actions.offer or actions.withdraw or actions.state:
            try:
                await self.store.record(rollout, actions, now=now)
            except StorageUnavailable:
                self.stale.set()
                raise
        for node in heard:
            await self._send(self.topics.ota(node, OtaTopic.OFFER), b"", node)
        # Together, so the stage's nodes ask at about the same moment and share the stream from its start.
        await asyncio.gather(*(self._offer(rollout, node) for node in actions.offer))
        if actions.state:
            log.info("ota_rollout_state", rollout=rollout.id, state=actions.state, reason=actions.reason)
        if rollout.state not in KEPT:
            for node in rollout.targets:
                if self.of_node.get(node) == rollout.id:
                    del self.of_node[node]
                self._leave(rollout.release, node)

    async def _offer(self, rollout: Rollout, node: str) -> None:
        assert self.master is not None
        manifest = self.releases[rollout.release].manifest
        offer = manifest.offer(node=node, key=device_key(self.master, node), stream=self.topics.ota_stream(
            rollout.release), force=rollout.policy.force, rollout=rollout.id)
        await self._send(self.topics.ota(node, OtaTopic.OFFER), offer.model_dump_json(exclude_none=True).encode(), node)

    async def _send(self, topic: str, payload: bytes, node: str) -> None:
        try:
            await self.publish(topic, payload)
        except WireError as exc:
            # Recorded already: the next connection's reconcile publishes the standing offers again.
            log.warning("ota_offer_not_published", node=node, withdraw=not payload, error=str(exc))

    def _leave(self, release: str, node: str) -> None:
        stream = self.streams.get(release)
        if stream is not None:
            stream.leave(node)
            self.wake()

    # -- views ----------------------------------------------------------------
    def view(self, rollout: Rollout) -> RolloutView:
        size = self.releases[rollout.release].manifest.size
        stream = self.streams.get(rollout.release)
        targets, total = [], 0
        for target in sorted(rollout.targets.values(), key=lambda t: (t.stage, t.node)):
            live = self.live.get(target.node) if self.of_node.get(target.node) == rollout.id else None
            done = target.state in DONE_DOWNLOADING and target.state not in ("failed", "rolled_back")
            got = size if done else (live.bytes if live else 0)
            rate = live.rate if live and target.state == "downloading" else None
            total += got
            targets.append(TargetView(
                node=target.node, stage=target.stage, state=target.state, offered=target.offered, bytes=got,
                size=size, percent=round(100 * got / size, 1), rate=rate,
                eta=round((size - got) / rate, 1) if rate else None, bad=live.bad if live else 0,
                code=target.code, reason=target.reason, since=target.since))
        members = set(stream.members) if stream else set()
        queued = list(stream.queued) if stream else []
        p = rollout.policy
        return RolloutView(
            id=rollout.id, release=rollout.release, state=rollout.state, reason=rollout.reason, stage=rollout.stage,
            stages=rollout.stages, canary=p.canary, max_failures=p.max_failures, min_sample=p.min_sample,
            force=p.force, size=size, percent=round(100 * total / (size * len(targets)), 1) if targets else 0.0,
            counts=rollout.counts(), downloading=sorted(n for n in members if n in rollout.targets),
            waiting=[n for n in queued if n in rollout.targets], targets=targets)

