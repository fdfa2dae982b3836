"""The ota tables on a real PostgreSQL: releases kept whole, rollouts read back as they were left."""

from __future__ import annotations

import pytest

from nodefleet.ota_release import Release, build
from nodefleet.sim import FIRMWARE_DIR
from services.ota.rollout import Policy, Rollout
from services.ota.store import OtaStore, ReleaseConflict, UnknownRelease


@pytest.fixture(scope="module")
def releases() -> tuple[Release, Release]:
    return build(FIRMWARE_DIR, version="1.4.0"), build(FIRMWARE_DIR, version="1.5.0", block_size=2048)


async def test_a_release_is_kept_whole_once(database, releases):
    first, second = releases
    store = await OtaStore.open(database)
    try:
        assert await store.add_release(first, now=1.0) is True
        assert await store.add_release(first, now=2.0) is False  # the same release again: a retry, no error
        kept = await store.release("1.4.0")
        assert kept.manifest == first.manifest and kept.image == first.image
        assert await store.add_release(second, now=3.0) is True
        assert [r["version"] for r in await store.releases()] == ["1.4.0", "1.5.0"]
        other = Release(manifest=second.manifest.model_copy(update={"version": "1.4.0"}), image=second.image)
        with pytest.raises(ReleaseConflict, match="already kept with another image"):
            await store.add_release(other, now=4.0)
        with pytest.raises(UnknownRelease, match="nodefleet ota release FILE"):
            await store.release("9.9.9")
    finally:
        await store.close()


async def test_a_rollout_reads_back_as_it_was_left(database, releases):
    store = await OtaStore.open(database)
    try:
        await store.add_release(releases[0], now=1.0)
        rollout, actions = Rollout.start(id="r1", release="1.4.0", targets=["a", "b", "c", "d"],
                                         policy=Policy(canary=1, stages=(0.5, 1.0), min_sample=2), now=10.0)
        await store.save_rollout(rollout, now=10.0)
        canary = rollout.stages[0][0]
        step = rollout.report(canary, "updated", now=11.0)
        await store.record(rollout, step, now=11.0)
        step = rollout.pause()
        await store.record(rollout, step, now=12.0)

        # A service killed here starts again from the tables.
        [again] = await store.open_rollouts()
        assert again == rollout
        assert again.state == "paused" and again.targets[canary].state == "updated"
        assert [e["state"] for e in await store.history(canary)] == ["updated"]
        finished, _ = Rollout.start(id="r2", release="1.4.0", targets=["e"], policy=Policy(), now=13.0)
        finished.state = "done"
        await store.save_rollout(finished, now=13.0)
        assert [r.id for r in await store.open_rollouts()] == ["r1"]
    finally:
        await store.close()
