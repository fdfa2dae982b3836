"""The rollout rules on their own: stages, advancing, halting, pause, resume, abort (no I/O, a set clock)."""

from __future__ import annotations

import pytest

from services.ota.rollout import NotATarget, Policy, Rollout, RolloutError, parse_stages, plan

NODES = [f"node-{n:02d}" for n in range(20)]


def start(policy: Policy, nodes=NODES, now: float = 1000.0):
    return Rollout.start(id="r1", release="1.4.0", targets=nodes, policy=policy, now=now)


def update(rollout: Rollout, nodes, state: str = "updated", now: float = 1001.0, **why):
    actions = None
    for node in nodes:
        step = rollout.report(node, state, now=now, **why)
        actions = step if actions is None else actions.merge(step)
    return actions


def test_stages_are_cumulative_shares_after_the_canary():
    assert parse_stages("10%, 50%,100%") == (0.1, 0.5, 1.0)
    stages = plan("r1", NODES, Policy(canary=1, stages=(0.1, 0.5, 1.0)))
    assert [len(s) for s in stages] == [1, 1, 8, 10]
    assert sorted(sum(stages, [])) == NODES
    # Same rollout, same order (a restarted service plans the same); another rollout, another canary.
    assert plan("r1", reversed(NODES), Policy(canary=1, stages=(0.1, 0.5, 1.0))) == stages
    assert {plan(f"r{n}", NODES, Policy())[0][0] for n in range(10)} != {stages[0][0]}
    # Tiny fleets: no empty stages (10% and 50% of two nodes are both the canary's one).
    tiny = plan("r1", ["a", "b"], Policy(canary=1, stages=(0.1, 0.5, 1.0)))
    assert [len(stage) for stage in tiny] == [1, 1] and sorted(sum(tiny, [])) == ["a", "b"]


@pytest.mark.parametrize(("text", "why"), [
    ("10,50%", "not a percentage"), ("50%,10%,100%", "must rise"), ("10%,50%", "last stage must be 100%"),
    ("0%,100%", "above 0%"), ("10%,150%", "at most 100%"),
])
def test_bad_stages_say_what_to_write(text, why):
    with pytest.raises(RolloutError, match=why):
        parse_stages(text)


def test_a_rollout_goes_stage_by_stage_and_finishes():
    rollout, actions = start(Policy(canary=1, stages=(0.1, 0.5, 1.0), max_failures=0.1, min_sample=3))
    canary = rollout.stages[0]
    assert actions.offer == canary and actions.state == "running"
    assert update(rollout, canary, "downloading").offer == []
    actions = update(rollout, canary)
    assert actions.offer == rollout.stages[1]
    actions = update(rollout, rollout.stages[1])
    assert actions.offer == rollout.stages[2]
    # 8 nodes, 10% may fail: 7.2 -> 8 must update before the last stage starts; one offline holds it.
    assert update(rollout, rollout.stages[2][:7]).offer == []
    actions = update(rollout, rollout.stages[2][7:])
    assert actions.offer == rollout.stages[3]
    actions = update(rollout, rollout.stages[3])
    assert actions.state == "done" and rollout.reason == "20 of 20 nodes updated"


def test_offline_nodes_do_not_hold_up_a_stage_and_update_later():
    rollout, _ = start(Policy(canary=0, stages=(0.5, 1.0), max_failures=0.1, min_sample=3))
    first = rollout.stages[0]
    actions = update(rollout, first[:-1])  # 9 of 10 updated: enough with 10% allowed to fail
    assert actions.offer == rollout.stages[1]
    assert rollout.targets[first[-1]].offered and rollout.targets[first[-1]].state == "queued"
    update(rollout, rollout.stages[1])
    assert rollout.state == "running"  # the offline node still has its offer
    assert update(rollout, first[-1:]).state == "done"


def test_a_failed_canary_halts_at_once_and_withdraws_what_it_can():
    rollout, _ = start(Policy(canary=1, min_sample=5))
    actions = update(rollout, rollout.stages[0], "rolled_back", code="self_test", reason="no broker within 60 s")
    assert actions.state == "halted" and "canary" in actions.reason and "no broker within 60 s" in actions.reason
    assert rollout.state == "halted" and actions.offer == []
    with pytest.raises(RolloutError, match="only a running rollout"):
        rollout.pause()


def test_failures_after_the_minimum_sample_halt_the_rollout():
    rollout, _ = start(Policy(canary=0, stages=(1.0,), max_failures=0.25, min_sample=4))
    nodes = rollout.stages[0]
    update(rollout, nodes[:2], "failed", code="bad_tag", reason="tag mismatch")
    assert rollout.state == "running"  # 2 finished: below the minimum sample
    update(rollout, nodes[2:4], "downloading")
    update(rollout, nodes[2:3], "updating")
    actions = update(rollout, nodes[4:6])  # 4 finished, 2 failed: 50% > 25%
    assert actions.state == "halted" and "2 of 4 finished nodes failed" in actions.reason
    # Still downloading: withdrawn; installing: too late to stop, kept.
    assert nodes[3] in actions.withdraw and nodes[2] not in actions.withdraw and nodes[0] not in actions.withdraw


def test_a_node_that_never_comes_back_from_installing_is_a_failure():
    rollout, _ = start(Policy(canary=1, return_deadline=300))
    canary = rollout.stages[0][0]
    update(rollout, [canary], "updating", now=1000.0)
    assert rollout.tick(1299.0).transitions == []
    actions = rollout.tick(1301.0)
    assert [(t.node, t.state, t.code) for t in actions.transitions] == [(canary, "failed", "no_return")]
    assert actions.state == "halted"


def test_pause_withdraws_unstarted_offers_and_resume_gives_them_back():
    rollout, _ = start(Policy(canary=0, stages=(1.0,)), nodes=NODES[:4])
    nodes = rollout.stages[0]
    update(rollout, nodes[:1], "downloading")
    actions = rollout.pause()
    assert actions.state == "paused" and sorted(actions.withdraw) == sorted(nodes[1:])
    assert update(rollout, nodes[:1]).offer == []  # progress is still recorded while paused
    actions = rollout.resume(now=1002.0)
    assert actions.state == "running" and sorted(actions.offer) == sorted(nodes[1:])


def test_resuming_a_halted_rollout_accepts_the_failures_so_far():
    rollout, _ = start(Policy(canary=1, stages=(1.0,), max_failures=0.1, min_sample=3))
    update(rollout, rollout.stages[0], "failed", code="not_newer", reason="1.4.0 is not newer than 1.4.0")
    assert rollout.state == "halted"
    actions = rollout.resume(now=1002.0)
    # The canary is accepted as failed, so its stage is settled: the rest of the fleet is offered.
    assert rollout.state == "running" and sorted(actions.offer) == sorted(rollout.stages[1])
    assert update(rollout, rollout.stages[1]).state == "done"


def test_abort_withdraws_everything_not_installing_and_is_final():
    rollout, _ = start(Policy(canary=0, stages=(1.0,)), nodes=NODES[:3])
    a, b, c = rollout.stages[0]
    update(rollout, [a], "updating")
    update(rollout, [b], "updated")
    actions = rollout.abort()
    assert actions.state == "aborted" and actions.withdraw == [c]
    with pytest.raises(RolloutError, match="already aborted"):
        rollout.abort()
    with pytest.raises(RolloutError, match="only a paused or halted"):
        rollout.resume(now=1.0)


def test_progress_from_a_stranger_is_refused():
    rollout, _ = start(Policy())
    with pytest.raises(NotATarget, match="not a target of rollout r1"):
        rollout.report("someone-else", "updated", now=1.0)


def test_policy_checks():
    with pytest.raises(RolloutError, match="min-sample"):
        Policy(min_sample=0)
    with pytest.raises(RolloutError, match="max-failures"):
        Policy(max_failures=1.0)
    with pytest.raises(RolloutError, match="at least one target"):
        plan("r1", [], Policy())


def test_an_updated_nodes_offer_is_withdrawn_and_its_word_again_changes_nothing():
    rollout, _ = start(Policy(canary=0, stages=(1.0,)), nodes=NODES[:3])
    first = update(rollout, NODES[:1])
    assert first.withdraw == NODES[:1] and [t.state for t in first.transitions] == ["updated"]
    assert rollout.targets[NODES[0]].offered is False
    again = update(rollout, NODES[:1])  # said again: the service had missed it, or it crossed the withdrawal
    assert again.transitions == [] and again.offer == []
    assert again.withdraw == NODES[:1]  # withdrawn again: the repeat stops once the offer is gone
    # A node that ran the release before the rollout says so at its first offer: it counts at once.
    assert update(rollout, NODES[1:3]).state == "done"
