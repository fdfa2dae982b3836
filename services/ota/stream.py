"""One shared stream per release: which frame goes out next, and to whom (docs/ota.md, "Transfer").

Pure: the service feeds it the nodes' wants and asks ``next()`` for the next
frame to publish until it answers None. Each member (a node downloading this
release) grants credit: at most ``got + window`` frames in its session, and
no member is ever sent more. A unit (table chunk or block) that two or more
members lack goes once on the shared stream, charged to each of them, and
only while each of them has credit: the stream goes at the pace of its
slowest member that is still heard, which is what keeps a slow flash from
being overrun. A unit only one member lacks goes to that member's repair
topic. Table chunks come
first (a block cannot be checked before its chunk), then blocks in order,
cycling. A frame sent to a member is in flight until the member has handled
that many frames (``got``); if its bitmap still lacks the unit then, the
frame was lost or bad, and the unit is due again. A member silent for
``silence`` seconds is left out until its next want, so a stalled node holds
nobody back; beyond ``max_members`` nodes wait (queued) for a free place.
When the first member joins an idle stream, frames wait ``gather`` seconds
(``held_until``), so the nodes of one stage, offered together, start on
the shared stream together instead of each on its own repairs.
"""

from __future__ import annotations

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
        self.sent += 1
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
        self.frames_shared = 0
        self.frames_repaired = 0
        self.gather = gather
        self.held_until = 0.0

    def want(self, node: str, want: Want, *, now: float) -> str:
        """Take a node's want; ``member``, ``queued`` (no free place yet) or ``complete``."""
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
            stalled = want.got == member.got and member.credit <= 0
            member.window, member.got, member.have, member.heard = want.window, want.got, have, now
            if stalled:
                member.sent, member.in_flight = want.got, {}
            member.in_flight = {unit: seq for unit, seq in member.in_flight.items()
                                if seq > want.got and not have[unit]}
        if member.complete():
            self.leave(node)
            return "complete"
        return "member"

    def leave(self, node: str) -> None:
        """A member finished, failed or lost its offer: its place goes to the longest waiting node."""
        self.members.pop(node, None)
        if node in self.queued:
            self.queued.remove(node)

    def _active(self, now: float) -> list[Member]:
        return [m for m in self.members.values() if now - m.heard <= self.silence]

    def next(self, *, now: float) -> Send | None:
        """The next frame to send, charged to whoever it is for; None while no active member has credit."""
        if now < self.held_until:
            return None
        active = self._active(now)
        able = [m for m in active if m.credit > 0]
        if not able:
            return None
        broke = [m for m in active if m.credit <= 0]
        unit = self._pick(able, broke)
        if unit is None:
            return None
        lacking = [m for m in able if m.lacks(unit)]
        for member in lacking:
            member.charge(unit)
        if len(lacking) >= 2:
            self.frames_shared += 1
            return Send(unit, None)
        self.frames_repaired += 1
        return Send(unit, lacking[0].node)

    def _pick(self, able: list[Member], broke: list[Member]) -> int | None:
        """The first unit someone with credit lacks and nobody without credit lacks (it would be overrun)."""

        def due(unit: int) -> bool:
            return any(m.lacks(unit) for m in able) and not any(m.lacks(unit) for m in broke)

        for unit in range(self.table):
            if due(unit):
                return unit
        blocks = self.units - self.table
        for step in range(blocks):
            unit = self.table + (self._cursor - self.table + step) % blocks
            if due(unit):
                self._cursor = unit + 1 if unit + 1 < self.units else self.table
                return unit
        return None
