"""One shared stream per release: which frame goes out next, and to whom (docs/ota.md, "Transfer").

Pure: the service feeds it the nodes' wants and asks ``next()`` for the next
frame to publish until it answers None. Each member (a node downloading this
release) grants credit: at most ``got + window`` frames in its session, and
no member is ever sent more. Every member is subscribed to the shared stream,
so every shared frame counts against every member's credit, whether it lacks
that unit or not (its ``got`` counts every frame it handled: a frame it was
not charged for would make its in-flight count, and so its repairs, wrong).
A unit (table chunk or block) that two or more members lack goes once on the
shared stream, and only while every member that is still heard has credit:
the stream goes at the pace of its slowest member, which is what keeps a
slow flash from being overrun. A unit only one member lacks goes to that
member's repair topic, and only when no shared frame can go: a member that
joined late or resumed rides the shared stream from where it is and gets its
gaps when the stream leaves room, instead of holding the others back with
its repairs. Table chunks come first (a block cannot be checked before its
chunk), then blocks in order, cycling. A frame sent to a member is in flight
until the member has handled that many frames (``got``); if its bitmap still
lacks the unit then, the frame was lost or bad, and the unit is due again. A
member silent for ``silence`` seconds is left out until its next want, so a
stalled node holds nobody back; beyond ``max_members`` nodes wait (queued)
for a free place. When the first member joins an idle stream, frames wait
``gather`` seconds (``held_until``), so the nodes of one stage, offered
together, start on the shared stream together instead of each on its own
repairs; the wait ends as soon as every node the caller expects has joined.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from nodefleet.contracts.ota import FrameError, Want, bitmap_bits
from nodefleet.errors import InputError

SILENCE = 5.0


class StreamError(InputError):
    """A want that does not fit this stream (another release, a bitmap of the wrong length)."""


@dataclass(frozen=True)
class Send:
    unit: int
    to: str | None
    """None: the shared stream; a node: its own repair topic."""


@dataclass(kw_only=True)
class Member:
    node: str
    session: str
    window: int
    got: int
    have: list[bool]
    heard: float
    sent: int = 0
    in_flight: dict[int, int] = field(default_factory=dict)
    """Unit -> the value of ``sent`` once it went out: handled when ``got`` reaches it."""

    @property
    def credit(self) -> int:
        return self.got + self.window - self.sent

    def lacks(self, unit: int) -> bool:
        return not self.have[unit] and unit not in self.in_flight

    def complete(self) -> bool:
        return all(self.have)

    def charge(self, unit: int) -> None:
        """One more frame published to this member (on the stream or its repair topic)."""
        self.sent += 1
        if self.lacks(unit):
            self.in_flight[unit] = self.sent


class Stream:
    def __init__(self, release: str, *, table: int, blocks: int, max_members: int = 50,
                 silence: float = SILENCE, gather: float = 0.0) -> None:
        self.release = release
        self.table = table
        self.units = table + blocks
        self.max_members = max_members
        self.silence = silence
        self.members: dict[str, Member] = {}
        self.queued: list[str] = []
        self._cursor = table
        self._repair_cursor = table
        self._shared_left = True
        """False once a scan found no unit two members lack; a want can change that (a join, a loss)."""
        self.frames_shared = 0
        self.frames_repaired = 0
        self.gather = gather
        self.held_until = 0.0

    def want(self, node: str, want: Want, *, now: float, expected: Collection[str] | None = None) -> str:
        """Take a node's want; ``member``, ``queued`` (no free place yet) or ``complete``.

        ``expected``: the nodes the caller offered this release to and still waits for; once all of them are
        members, the gather ends at once (one node, or a whole stage online, need not wait it out)."""
        if want.release != self.release:
            raise StreamError(f"want for release {want.release} on the stream of {self.release}")
        try:
            have = bitmap_bits(want.have, self.units)
        except (FrameError, ValueError) as exc:
            raise StreamError(f"want of {node}: {exc}") from exc
        member = self.members.get(node)
        if member is None:
            if all(have):
                return "complete"
            # First come, first served: a place that frees up goes to the longest waiting node.
            if node not in self.queued:
                self.queued.append(node)
            if self.queued.index(node) >= self.max_members - len(self.members):
                return "queued"
            self.queued.remove(node)
        if not self.members:
            self.held_until = now + self.gather
        if member is None or member.session != want.session:
            # A new session (a reboot or reconnect): what was in flight before is gone with the old connection.
            member = Member(node=node, session=want.session, window=want.window, got=want.got, have=have, heard=now)
            member.sent = want.got
            self.members[node] = member
        else:
            # The same count again with no credit left: the node's stall timer (2 s without a frame), so what
            # was in flight never arrived (a publish that failed, a broker that dropped it); grant it again.
            repeated = want.got == member.got  # the node's stall timer: nothing arrived for 2 s
            stalled = repeated and member.credit <= 0
            member.window, member.got, member.have, member.heard = want.window, want.got, have, now
            if stalled:
                member.sent, member.in_flight = want.got, {}
            # It handled more than it was sent: shared frames that reached it between its subscription and
            # its first want. Its credit counts from what it handled, and a frame counts as lost only half a
            # window after its turn (or at a stall), so those few frames never make repairs of frames that
            # are still on their way.
            member.sent = max(member.sent, want.got)
            lost = want.got if repeated else want.got - member.window // 2
            member.in_flight = {unit: seq for unit, seq in member.in_flight.items()
                                if seq > lost and not have[unit]}
        self._shared_left = True
        if member.complete():
            self.leave(node)
            return "complete"
        if self.held_until > now and expected is not None and all(n in self.members for n in expected):
            self.held_until = now
        return "member"

    def leave(self, node: str) -> None:
        """A member finished, failed or lost its offer: its place goes to the longest waiting node."""
        self.members.pop(node, None)
        if node in self.queued:
            self.queued.remove(node)

    def _active(self, now: float) -> list[Member]:
        return [m for m in self.members.values() if now - m.heard <= self.silence]

    def next(self, *, now: float) -> Send | None:
        """The next frame to send, charged to whoever it gets to; None while nothing may go."""
        if now < self.held_until:
            return None
        active = self._active(now)
        if not any(m.credit > 0 for m in active):
            return None
        picked = self._pick(active)
        if picked is None and self._expire_handled(active):
            picked = self._pick(active)
        if picked is None:
            return None
        unit, lacking = picked
        if len(lacking) >= 2:
            # Every member is subscribed to the stream: each one handles this frame, and counts it in got.
            for member in self.members.values():
                member.charge(unit)
            self.frames_shared += 1
            return Send(unit, None)
        lacking[0].charge(unit)
        self.frames_repaired += 1
        return Send(unit, lacking[0].node)

    def _expire_handled(self, active: list[Member]) -> bool:
        """With credit left and nothing to send: a unit a member has handled by count (``got`` reached its turn)
        and still lacks was lost or refused, so it is due again now rather than half a window later.

        Without this a node that refused a run of frames (every block behind a bad table chunk) would get
        only the few units past the half window per want, and wait out its stall timer (2 s) for each next
        want. The cost: a frame that is in fact still on its way (the node's count ran ahead of ours by what
        reached it before its first want) may go twice, and only while the stream would otherwise be idle."""
        expired = False
        for member in active:
            if member.credit <= 0:
                continue
            handled = [unit for unit, turn in member.in_flight.items() if turn <= member.got]
            for unit in handled:
                del member.in_flight[unit]
            expired = expired or bool(handled)
        if expired:
            self._shared_left = True
        return expired

    def _pick(self, active: list[Member]) -> tuple[int, list[Member]] | None:
        """Table chunks first, then the shared stream from its cursor, then repairs; with who lacks the unit.

        A shared frame waits until every active member has credit (each of them gets it); a repair needs
        its member's credit only, and goes only when no unit is left that two or more members lack."""
        everyone = all(m.credit > 0 for m in active)

        def lacking(unit: int) -> list[Member]:
            return [m for m in active if m.lacks(unit)]

        for unit in range(self.table):
            who = lacking(unit)
            if (len(who) >= 2 and everyone) or (len(who) == 1 and who[0].credit > 0):
                return unit, who
        blocks = self.units - self.table
        if len(active) >= 2 and self._shared_left:
            for step in range(blocks):
                unit = self.table + (self._cursor - self.table + step) % blocks
                who = lacking(unit)
                if len(who) >= 2:
                    if not everyone:
                        return None  # the stream waits for its slowest member's credit
                    self._cursor = unit + 1 if unit + 1 < self.units else self.table
                    return unit, who
            self._shared_left = False
        for step in range(blocks):
            unit = self.table + (self._repair_cursor - self.table + step) % blocks
            who = lacking(unit)
            if len(who) == 1 and who[0].credit > 0:
                self._repair_cursor = unit + 1 if unit + 1 < self.units else self.table
                return unit, who
        return None
