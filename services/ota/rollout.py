"""Rollouts: which nodes are offered a release when, and when a rollout stops by itself.

Pure: no I/O and no clock of its own. The ota service feeds it the nodes'
progress (``report``) and the time (``tick``) and carries out what it answers
(``Actions``: offers to publish or withdraw, transitions to record).

A rollout's targets are cut into stages: the canary first (``canary`` nodes),
then cumulative percentages of all targets (``10%,50%,100%``). A stage's
nodes are offered the release when the stage starts; the next stage starts
once enough of the current one updated (all but ``max_failures`` of it), so
nodes that are offline do not hold a rollout up: they keep their retained
offer and update when they return. The rollout halts by itself when a canary
fails, or when, after ``min_sample`` nodes finished, the failed share
(failures, rollbacks, and nodes that never came back from installing) is over
``max_failures``. Pause stops offering (offers not yet taken up are
withdrawn, downloads under way go on); resume offers again (resuming a halted
rollout accepts the failures so far); abort withdraws every offer that can
still be withdrawn. A node's offer is withdrawn once its ``updated`` is in:
a node that sees an offer of the release it runs says ``updated`` again, so
a report the service missed (down, or its PostgreSQL away) comes back.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from nodefleet.contracts.ota import FINAL_STATES
from nodefleet.errors import InputError

RolloutState = Literal["running", "paused", "halted", "aborted", "done"]
OPEN_STATES: frozenset[str] = frozenset({"running", "paused"})
FAILURES: frozenset[str] = frozenset({"failed", "rolled_back"})
INSTALLING = "updating"
"""Rebooting into the new app: too late to withdraw the offer."""


class RolloutError(InputError):
    """A rollout that cannot be planned or a change it cannot take; the message says what to do instead."""


class NotATarget(RolloutError):
    """Progress from a node this rollout does not update."""


_STAGE = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*%\s*$")


def parse_stages(text: str) -> tuple[float, ...]:
    """``"10%,50%,100%"`` -> (0.1, 0.5, 1.0): rising cumulative shares of all targets, the last 100%."""
    shares = []
    for part in text.split(","):
        match = _STAGE.match(part)
        if match is None:
            raise RolloutError(f"stage {part.strip()!r} is not a percentage: write stages like 10%,50%,100%")
        shares.append(float(match.group(1)) / 100)
    return Policy(stages=tuple(shares)).stages


@dataclass(frozen=True, kw_only=True)
class Policy:
    canary: int = 1
    stages: tuple[float, ...] = (1.0,)
    max_failures: float = 0.1
    """Share of the finished nodes that may fail before the rollout halts (0.1 = 10%)."""
    min_sample: int = 3
    """Finished nodes needed before the failure share counts (a canary failure halts at once)."""
    return_deadline: float = 600.0
    """Seconds a node may stay ``updating`` (rebooting into the new app) before it counts as not come back."""
    force: bool = False
    """Offer the release even to nodes running a newer one (covered by each offer's tag)."""

    def __post_init__(self) -> None:
        if self.canary < 0:
            raise RolloutError("canary must be 0 or more nodes")
        if not self.stages or any(not 0 < s <= 1 for s in self.stages):
            raise RolloutError("stages are percentages above 0% and at most 100%")
        if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
            raise RolloutError("stages must rise: each is the share of all targets updated by its end, "
                               "e.g. 10%,50%,100%")
        if self.stages[-1] != 1:
            raise RolloutError("the last stage must be 100%, or some targets would never be offered the release")
        if not 0 <= self.max_failures < 1:
            raise RolloutError("max-failures is a percentage from 0% to below 100%")
        if self.min_sample < 1:
            raise RolloutError("min-sample must be at least 1")
        if self.return_deadline <= 0:
            raise RolloutError("the return deadline must be positive")


def plan(rollout: str, targets: Iterable[str], policy: Policy) -> list[list[str]]:
    """The stages' nodes: canary first, then up to each cumulative share; empty stages are dropped.

    The order is a hash of rollout and node: the same every time for one rollout (a restarted service
    plans the same stages), different between rollouts (the same node is not always the canary)."""
    nodes = sorted(set(targets), key=lambda node: hashlib.sha256(f"{rollout}\n{node}".encode()).digest())
    if not nodes:
        raise RolloutError("a rollout needs at least one target node")
    stages: list[list[str]] = []
    taken = min(policy.canary, len(nodes))
    if taken:
        stages.append(nodes[:taken])
    for share in policy.stages:
        upto = max(taken, math.ceil(share * len(nodes)))
        if upto > taken:
            stages.append(nodes[taken:upto])
            taken = upto
    return stages


@dataclass(kw_only=True)
class Target:
    node: str
    stage: int
    state: str = "queued"
    since: float = 0.0
    code: str | None = None
    reason: str | None = None
    offered: bool = False


@dataclass(frozen=True)
class Transition:
    node: str
    state: str
    code: str | None = None
    reason: str | None = None


@dataclass
class Actions:
    """What the service must do now: publish offers, withdraw them, record transitions and the rollout's state."""

    offer: list[str] = field(default_factory=list)
    withdraw: list[str] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    state: RolloutState | None = None
    """Set when the rollout's own state changed."""
    reason: str | None = None

    def merge(self, other: Actions) -> Actions:
        self.offer += other.offer
        self.withdraw += other.withdraw
        self.transitions += other.transitions
        if other.state is not None:
            self.state, self.reason = other.state, other.reason
        return self


@dataclass(kw_only=True)
class Rollout:
    id: str
    release: str
    policy: Policy
    stages: list[list[str]]
    targets: dict[str, Target]
    state: RolloutState = "running"
    stage: int = 0
    """The last stage started."""
    reason: str | None = None
    accepted: set[str] = field(default_factory=set)
    """Failed nodes an operator accepted by resuming a halted rollout: they no longer count towards a halt."""

    @classmethod
    def start(cls, *, id: str, release: str, targets: Iterable[str], policy: Policy,
              now: float) -> tuple[Rollout, Actions]:
        stages = plan(id, targets, policy)
        found = {node: Target(node=node, stage=number, since=now)
                 for number, nodes in enumerate(stages) for node in nodes}
        rollout = cls(id=id, release=release, policy=policy, stages=stages, targets=found)
        actions = Actions(state="running")
        actions.merge(rollout._offer_stage(0))
        return rollout, actions.merge(rollout._evaluate(now))

    # -- what the service reports ---------------------------------------------
    def report(self, node: str, state: str, *, now: float, code: str | None = None,
               reason: str | None = None) -> Actions:
        """A node's progress; a later word overrides (an updated node that rolls back later counts as failed)."""
        target = self.targets.get(node)
        if target is None:
            raise NotATarget(f"{node} is not a target of rollout {self.id}")
        actions = Actions()
        if state != target.state or code != target.code:
            target.state, target.code, target.reason, target.since = state, code, reason, now
            actions.transitions.append(Transition(node, state, code, reason))
        if state == "updated":
            # Heard: withdrawn. A standing offer of the release a node runs is how the node learns that its
            # ``updated`` was missed (it says it again), so it stands only until that word is in. Withdrawn
            # again at a repeat: a service stopped between writing the word and withdrawing left it standing.
            target.offered = False
            actions.withdraw.append(node)
        return actions.merge(self._evaluate(now))

    def tick(self, now: float) -> Actions:
        """Time passed: a node installing for longer than the return deadline did not come back."""
        actions = Actions()
        for target in self.targets.values():
            if target.state == INSTALLING and now - target.since > self.policy.return_deadline:
                why = f"did not come back within {self.policy.return_deadline:g} s of installing"
                target.state, target.code, target.reason, target.since = "failed", "no_return", why, now
                actions.transitions.append(Transition(target.node, "failed", "no_return", why))
        return actions.merge(self._evaluate(now))

    # -- what the operator asks -----------------------------------------------
    def pause(self) -> Actions:
        if self.state != "running":
            raise RolloutError(f"rollout {self.id} is {self.state}: only a running rollout can be paused")
        self.state = "paused"
        withdrawn = [t.node for t in self.targets.values() if t.offered and t.state == "queued"]
        for node in withdrawn:
            self.targets[node].offered = False
        return Actions(withdraw=withdrawn, state="paused", reason="paused by the operator")

    def resume(self, now: float) -> Actions:
        if self.state not in ("paused", "halted"):
            raise RolloutError(f"rollout {self.id} is {self.state}: only a paused or halted rollout can be resumed")
        if self.state == "halted":
            self.accepted |= {t.node for t in self.targets.values() if t.state in FAILURES}
        self.state, self.reason = "running", None
        actions = Actions(state="running")
        for number in range(self.stage + 1):
            actions.merge(self._offer_stage(number))
        return actions.merge(self._evaluate(now))

    def abort(self) -> Actions:
        if self.state not in OPEN_STATES and self.state != "halted":
            raise RolloutError(f"rollout {self.id} is already {self.state}")
        self.state, self.reason = "aborted", "aborted by the operator"
        return Actions(withdraw=self._withdraw_all(), state="aborted", reason=self.reason)

    # -- the rules ------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for target in self.targets.values():
            found[target.state] = found.get(target.state, 0) + 1
        return found

    def _offer_stage(self, number: int) -> Actions:
        offered = []
        for node in self.stages[number]:
            target = self.targets[node]
            if not target.offered and target.state not in FINAL_STATES:
                target.offered = True
                offered.append(node)
        return Actions(offer=offered)

    def _withdraw_all(self) -> list[str]:
        withdrawn = []
        for target in self.targets.values():
            if target.offered and target.state not in FINAL_STATES and target.state != INSTALLING:
                target.offered = False
                withdrawn.append(target.node)
        return withdrawn

    def _halt_reason(self) -> str | None:
        started = [t for t in self.targets.values() if t.stage <= self.stage and t.node not in self.accepted]
        if self.policy.canary and any(t.stage == 0 and t.state in FAILURES for t in started):
            node = next(t for t in started if t.stage == 0 and t.state in FAILURES)
            return f"the canary {node.node} {node.state.replace('_', ' ')}: {node.reason or node.code}"
        finished = [t for t in started if t.state in FINAL_STATES]
        failed = [t for t in finished if t.state in FAILURES]
        if len(finished) >= self.policy.min_sample and len(failed) / len(finished) > self.policy.max_failures:
            return (f"{len(failed)} of {len(finished)} finished nodes failed, over the "
                    f"{self.policy.max_failures:.0%} allowed")
        return None

    def _evaluate(self, now: float) -> Actions:
        if self.state != "running":
            return Actions()
        why = self._halt_reason()
        if why is not None:
            self.state, self.reason = "halted", why
            return Actions(withdraw=self._withdraw_all(), state="halted", reason=why)
        actions = Actions()
        while self.stage + 1 < len(self.stages) and self._stage_succeeded(self.stage):
            self.stage += 1
            actions.merge(self._offer_stage(self.stage))
        if self.stage + 1 == len(self.stages) and all(t.state in FINAL_STATES for t in self.targets.values()):
            self.state = "done"
            done = self.counts()
            self.reason = f"{done.get('updated', 0)} of {len(self.targets)} nodes updated"
            actions.merge(Actions(state="done", reason=self.reason))
        return actions

    def _stage_succeeded(self, number: int) -> bool:
        nodes: Sequence[str] = self.stages[number]
        # Failures the operator accepted (by resuming) count as settled, or a failed canary would block for ever.
        settled = sum(self.targets[node].state == "updated" or node in self.accepted for node in nodes)
        return settled >= math.ceil((1 - self.policy.max_failures) * len(nodes) - 1e-9)
