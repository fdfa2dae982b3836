"""When runs fall due, and what the scheduler does then: nothing, record, or send the backup.

One heap of due checks for every node; one task pops every check that is due
and handles them as a batch (claims in chunks of a thousand per database round
trip, two chunks in flight, each chunk's commands written as soon as its claim
returns), so ten thousand runs due in the same second go out together.

At ``start + grace`` a run is classified:

* the node reported the run id            -> ``run`` recorded, nothing sent;
* the node is stopped / logic disabled    -> ``skipped`` (a manual stop is respected);
* the window is over                      -> ``miss``;
* the node is asleep by plan (status ``sleeping``, not yet past its ``sleep_until`` and the wake grace)
                                           -> ``skipped``;
* the node overslept (still ``sleeping`` after that) -> claim the ``backup`` (the broker holds it for the node);
* the node is offline                     -> ``miss``; resumed if it comes back inside the window;
* otherwise                               -> claim the ``backup``; the instance that wins sends
  ``SwitchCommand(state, until=end, run_id, expires=end)`` and marks it sent once the broker acknowledged it
  (if not, it checks again after the lease); a loser checks again after the lease and takes
  over a claim whose instance died before its command was acknowledged.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nodefleet.errors import StorageUnavailable
from nodefleet.logging import get_logger
from nodefleet.wire import NotSent

from .nodes import NodeView
from .rulebook import Run, next_start, window
from .store import TRANSIENT, Event, Store

log = get_logger(__name__)

CHECK, RESUME, TAKEOVER, RESERVE = "check", "resume", "takeover", "reserve"
CLAIM_CHUNK = 1000  # claims per database round trip; sending one chunk overlaps the next claims
CLAIMS_IN_FLIGHT = 2  # chunks the database works on at once (the pool has 4 connections)

Acked = asyncio.Future[None]
SendBackups = Callable[[list[Event]], Awaitable[Acked]]
"""Writes the backups out; the future it returns is done once the broker acknowledged all of them."""
Publish = Callable[[str, list[Event]], Awaitable[None]]


@dataclass(slots=True)
class Due:
    at: float
    node: str
    generation: int
    run: Run
    what: str = CHECK


@dataclass
class Counts:
    backups: int = 0
    runs: int = 0
    misses: int = 0
    skipped: int = 0
    takeovers: int = 0


class Planner:
    def __init__(self, *, store: Store, grace: float, lease: float, send: SendBackups, publish: Publish,
                 clock: Callable[[], float] = time.time, on_idle: Callable[[float | None], None] | None = None,
                 wake_grace: float = 60.0, ahead: float = 0.0) -> None:
        self.store = store
        self.ahead = ahead
        self.grace = grace
        self.wake_grace = wake_grace
        self.lease = lease
        self.send = send
        self.publish = publish
        self.clock = clock
        self.on_idle = on_idle
        self.nodes: dict[str, NodeView] = {}
        self.counts = Counts()
        # (at, seq, due): tuples compare in C, ten thousand pops in one second cost no Python-level __lt__.
        self._heap: list[tuple[float, int, Due]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._confirming: set[asyncio.Task[None]] = set()

    def view(self, node: str) -> NodeView:
        found = self.nodes.get(node)
        if found is None:
            found = self.nodes[node] = NodeView(node)
        return found

    # -- planning ----------------------------------------------------------
    def replan(self, view: NodeView) -> None:
        """The schedule or tz changed: forget planned checks, plan the open run and the next."""
        view.generation += 1
        view.planned.clear()
        if not view.rules:
            return
        now = self.clock()
        current = window(view.rules, view.tz, int(now))
        if current is not None:
            self._push(view, current, max(now, current.start + self.grace))
        self._plan_after(view, int(now))
        stale = view.reserved - view.planned  # reserved for a run the new schedule no longer has
        if stale:
            view.reserved -= stale
            self._background(self._withdraw([(view.name, run_id) for run_id in stale]))

    def _plan_after(self, view: NodeView, ts: int) -> None:
        nxt = next_start(view.rules, view.tz, ts)
        if nxt is not None:
            self._push(view, nxt, nxt.start + self.grace)

    def _push(self, view: NodeView, run: Run, at: float, what: str = CHECK) -> None:
        if what == CHECK:
            if run.run_id in view.planned:
                return
            view.planned.add(run.run_id)
            if self.ahead and at - self.ahead > self.clock():
                self._enqueue(Due(at - self.ahead, view.name, view.generation, run, RESERVE))
        self._enqueue(Due(at, view.name, view.generation, run, what))

    def _enqueue(self, due: Due) -> None:
        heapq.heappush(self._heap, (due.at, next(self._seq), due))
        if self._heap[0][0] >= due.at:
            self._wake.set()

    def came_online(self, view: NodeView) -> None:
        """Runs missed while the node was away are checked again a grace period from now, if still open."""
        now = self.clock()
        for run in list(view.missed.values()):
            if now < run.end:
                self._enqueue(Due(now + self.grace, view.name, view.generation, run, RESUME))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    # -- running -----------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            for task in self._confirming:
                task.cancel()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            if self._heap and self._heap[0][0] <= now:
                batch = []
                while self._heap and self._heap[0][0] <= now:
                    batch.append(heapq.heappop(self._heap)[2])
                try:
                    await self.handle(batch)
                except (StorageUnavailable, *TRANSIENT) as exc:
                    # The database is away: the same checks again in a second (claims make a retry safe).
                    log.warning("database_unavailable", error=str(exc) or type(exc).__name__, checks=len(batch))
                    for due in batch:
                        due.at = self.clock() + 1.0
                        self._enqueue(due)
                    await asyncio.sleep(1.0)
                except Exception:  # a bug in one batch must not end the service
                    log.exception("batch_failed", checks=len(batch))
                continue
            if self.on_idle is not None:
                self.on_idle(None if not self._heap else self._heap[0][0] - now)
                now = self.clock()  # the hook may have taken a while
            timeout = None if not self._heap else max(0.0, self._heap[0][0] - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def handle(self, batch: list[Due]) -> None:
        now = self.clock()
        done: dict[str, list[Event]] = {"run": [], "miss": [], "skipped": []}
        to_claim: list[Event] = []
        reserved: list[Event] = []  # claimed ahead: only the publish is left
        to_reserve: list[tuple[Event, float]] = []
        to_withdraw: list[tuple[str, str]] = []
        takeovers: list[Due] = []
        to_plan: list[tuple[NodeView, int]] = []  # the runs after these, planned once the backups are out
        for due in batch:
            view = self.nodes.get(due.node)
            if view is None or due.generation != view.generation:
                continue  # the schedule changed since this was planned
            if due.what == TAKEOVER:
                if not view.saw(due.run.run_id) and now < due.run.end:
                    takeovers.append(due)  # another instance claimed it: was it sent?
                continue
            if due.what == RESERVE:
                # Likely to need the backup (as things stand now): claim it before its second comes.
                if due.run.run_id not in view.reserved and self.classify(view, due.run, now, resumed=False)[0] == "claim":
                    to_reserve.append(((view.name, due.run, None), due.at + self.ahead))
                continue
            if due.what == CHECK:
                view.planned.discard(due.run.run_id)
                to_plan.append((view, due.run.start))
            kind, detail = self.classify(view, due.run, now, resumed=due.what == RESUME)
            if kind == "miss" and view.online is not True:
                view.missed[due.run.run_id] = due.run  # resumed if the node comes back inside the window
            else:
                view.missed.pop(due.run.run_id, None)
            if due.run.run_id in view.reserved:
                view.reserved.discard(due.run.run_id)
                if kind == "claim":
                    reserved.append((view.name, due.run, detail))
                    continue
                to_withdraw.append((view.name, due.run.run_id))  # not needed after all: no one may send it
            if kind == "claim":
                to_claim.append((view.name, due.run, detail))
            elif kind:
                done[kind].append((view.name, due.run, detail))
        if to_claim or reserved:
            began = self.clock()
            written: list[tuple[list[Event], Acked]] = []
            if reserved:
                acked = await self._send(reserved)
                if acked is not None:
                    written.append((reserved, acked))
            more, claim_wait = await self._claim_and_queue(to_claim) if to_claim else ([], 0.0)
            written += more
            for won, acked in written:  # after the whole batch is out: marking it sent must not slow its claims
                self._confirm_later(won, acked, began)
            log.debug("backups", sent=sum(len(won) for won, _ in written), late_ms=round((began - batch[0].at) * 1000, 1),
                      queued_ms=round((self.clock() - began) * 1000, 1), claim_wait_ms=round(claim_wait * 1000, 1))
        for i, (view, after) in enumerate(to_plan):
            self._plan_after(view, after)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # planning 10,000 runs takes ~150 ms: let the commands' writes and acks through
        for due in takeovers:
            await self._take_over(due)
        if to_reserve:
            await self._reserve(to_reserve)
        for kind, events in done.items():
            recorded = await self.store.record(kind, events)
            setattr(self.counts, _COUNTER[kind], getattr(self.counts, _COUNTER[kind]) + len(recorded))
            if recorded:
                await self.publish(kind, recorded)
        if to_withdraw:
            # After the runs are recorded: another instance's claim of one now finds its ``run`` and is refused.
            await self._withdraw(to_withdraw)

    async def _claim_and_queue(self, to_claim: list[Event]) -> tuple[list[tuple[list[Event], Acked]], float]:
        """Claim in chunks, a few in flight; a chunk's won backups go to the publisher as soon as its claim returns.

        Returns the backups written out (with the acknowledgement of each chunk) and the time spent waiting for claims.
        """
        chunks = [to_claim[i:i + CLAIM_CHUNK] for i in range(0, len(to_claim), CLAIM_CHUNK)]
        claims = [asyncio.create_task(self.store.claim(chunk)) for chunk in chunks[:CLAIMS_IN_FLIGHT]]
        written: list[tuple[list[Event], Acked]] = []
        waited = 0.0
        try:
            for i, chunk in enumerate(chunks):
                asked = self.clock()
                won = await claims[i]
                waited += self.clock() - asked
                if i + CLAIMS_IN_FLIGHT < len(chunks):
                    claims.append(asyncio.create_task(self.store.claim(chunks[i + CLAIMS_IN_FLIGHT])))
                acked = await self._send(won)
                if acked is not None:
                    written.append((won, acked))
                won_ids = {(n, r.run_id) for n, r, _ in won}
                for node, run, _ in chunk:
                    if (node, run.run_id) not in won_ids:
                        self._recheck(node, run)
        finally:
            for task in claims:
                task.cancel()  # after a failed claim: the others are retried with the whole batch
            await asyncio.gather(*claims, return_exceptions=True)
        return written, waited

    async def _reserve(self, to_reserve: list[tuple[Event, float]]) -> None:
        """Claim backups ahead of their second, in chunks; what fails is claimed at the second as before."""
        for i in range(0, len(to_reserve), CLAIM_CHUNK):
            chunk = to_reserve[i:i + CLAIM_CHUNK]
            try:
                # Stamped with the chunk's earliest due time: the lease of a dead instance's reservation counts from it.
                won = await self.store.reserve([event for event, _ in chunk], min(due for _, due in chunk))
            except (StorageUnavailable, *TRANSIENT) as exc:
                log.warning("reservation_failed", error=str(exc) or type(exc).__name__, count=len(chunk))
                return
            for node, run, _ in won:
                view = self.nodes.get(node)
                if view is not None:
                    view.reserved.add(run.run_id)
            if i + CLAIM_CHUNK < len(to_reserve):
                await asyncio.sleep(0)  # let the writes and acknowledgements of backups due now through
        log.debug("reserved", asked=len(to_reserve))

    async def _withdraw(self, claims: list[tuple[str, str]]) -> None:
        try:
            await self.store.withdraw(claims)
        except (StorageUnavailable, *TRANSIENT) as exc:
            # Left in the table: no instance sends it (a takeover follows only a lost claim at the due second).
            log.warning("withdrawal_failed", error=str(exc) or type(exc).__name__, count=len(claims))

    def _background(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    def classify(self, view: NodeView, run: Run, now: float, *, resumed: bool) -> tuple[str | None, str | None]:
        """What to do about ``run`` now: ``run``, ``skipped``, ``miss``, ``claim`` or None (nothing)."""
        if view.saw(run.run_id):
            return "run", "resumed by the node" if resumed else None
        if view.mode in ("stopped", "logic_disabled"):
            return "skipped", f"node mode is {view.mode}"
        if now >= run.end:
            return "miss", "the window ended before the node reported the run"
        if view.asleep and view.sleep_until is not None:
            if view.asleep_by_plan(now, self.wake_grace):
                return "skipped", f"node asleep by plan until {view.sleep_until:.0f}"
            return "claim", f"node overslept its wake at {view.sleep_until:.0f}: held by the broker until it wakes"
        if view.online is not True:
            return "miss", "node offline at the due time"
        return "claim", "resumed after the node came back" if resumed else f"state did not follow within {self.grace:g} s"

    async def _send(self, won: list[Event]) -> Acked | None:
        """Write the won backups out; None (and a recheck after the lease) if the publisher cannot take them."""
        if not won:
            return None
        try:
            return await self.send(won)
        except NotSent as exc:
            self._not_sent(won, exc)
            return None

    def _confirm_later(self, sent: list[Event], acked: Acked, written: float) -> None:
        """Mark backups sent once the broker acknowledged them, in the background: the next due second does not wait."""
        self._background(self._confirm(sent, acked, written))

    def _not_sent(self, won: list[Event], exc: BaseException) -> None:
        # Our claims stay unsent, so after the lease we (or another instance) take them over and send again;
        # the node treats a run id it already executed as a no-op.
        log.warning("backup_not_sent", error=str(exc) or type(exc).__name__, count=len(won))
        for node, run, _ in won:
            self._recheck(node, run)

    async def _confirm(self, sent: list[Event], acked: Acked, written: float) -> None:
        try:
            await asyncio.wait_for(acked, self.lease)
        except (NotSent, TimeoutError) as exc:
            self._not_sent(sent, exc)
            return
        log.debug("backups_acknowledged", count=len(sent), ack_ms=round((self.clock() - written) * 1000, 1))
        try:
            await self.store.mark_sent([(node, run.run_id) for node, run, _ in sent])
        except (StorageUnavailable, *TRANSIENT) as exc:
            self._not_sent(sent, exc)
            return
        self.counts.backups += len(sent)
        await self.publish("backup", sent)

    def _recheck(self, node: str, run: Run) -> None:
        view = self.nodes[node]
        self._enqueue(Due(self.clock() + self.lease, node, view.generation, run, TAKEOVER))

    async def _take_over(self, due: Due) -> None:
        state = await self.store.claim_state(due.node, due.run.run_id)
        if state != "pending":
            return  # sent, or the claim is gone
        if await self.store.take_over(due.node, due.run.run_id, self.lease):
            log.warning("backup_taken_over", node=due.node, run_id=due.run.run_id)
            self.counts.takeovers += 1
            won = [(due.node, due.run, "taken over from an instance that did not send it")]
            acked = await self._send(won)
            if acked is not None:
                self._confirm_later(won, acked, self.clock())
        else:
            self._recheck(due.node, due.run)


_COUNTER = {"run": "runs", "miss": "misses", "skipped": "skipped"}
