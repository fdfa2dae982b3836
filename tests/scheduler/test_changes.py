"""Schedule changes have one owner: concurrent ``nodefleet schedule set`` calls all land, one version each."""

from __future__ import annotations

import asyncio
import json

from .conftest import cli


async def test_twenty_concurrent_sets_all_land(scheduler, watch, mosquitto, topics):
    # Two instances: each receives every request; each change must still be applied once.
    await scheduler("sched-a")
    await scheduler("sched-b")
    results = await asyncio.gather(*(
        cli(mosquitto, topics, "set", "garden", "--at", f"{i:02d}:30", "--for", "10m", "--id", f"rule-{i}")
        for i in range(20)))
    assert [code for code, _, _ in results] == [0] * 20, [err for code, _, err in results if code]
    final = await watch.wait(topics.schedule("garden"), lambda s: s["version"] == 20)
    assert sorted(r["id"] for r in final["rules"]) == sorted(f"rule-{i}" for i in range(20))
    published = [json.loads(p)["version"] for _, t, p in watch.messages if t == topics.schedule("garden") and p]
    assert published == sorted(set(published)) and published[-1] == 20, published
    said = sorted(int(err.split("schedule version ")[1].split()[0]) for _, _, err in results)
    assert said == list(range(1, 21))
    await asyncio.sleep(0.5)  # nothing after the 20th: no change was applied twice
    assert watch.found(topics.schedule("garden"))[-1] == final


async def test_a_change_builds_on_a_schedule_published_directly(scheduler, watch, mosquitto, topics):
    await scheduler()
    await watch.retain(topics.schedule("porch"), {"v": 1, "version": 7, "rules": [
        {"id": "night", "at": "22:00", "duration": 600}]})
    await watch.wait(topics.schedule("porch"))
    for _ in range(50):  # the scheduler keeps it once it arrived
        shown = await watch.request("show", {"node": "porch"})
        if shown["schedule"]:
            break
        await asyncio.sleep(0.05)
    code, _, err = await cli(mosquitto, topics, "set", "porch", "--at", "06:00", "--for", "5m")
    assert code == 0, err
    new = await watch.wait(topics.schedule("porch"), lambda s: s["version"] == 8)
    assert [r["id"] for r in new["rules"]] == ["night", "on-0600"]


async def test_without_a_scheduler_set_says_so(mosquitto, topics):
    code, _, err = await cli(mosquitto, topics, "set", "porch", "--at", "06:00", "--for", "5m", "--timeout", "1")
    assert code == 1
    assert "no answer from the scheduler service" in err and "nodefleet up" in err, err
