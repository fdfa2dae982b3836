"""Install only when idle (docs/ota.md, "The receiver"): with the relay ON the node downloads and verifies, then
waits; switched OFF it installs. A forced offer installs at once, and the relay stays ON through the reboot. Every
state the node publishes is recorded: the relay never toggles across the update."""

from __future__ import annotations

import asyncio

from .conftest import Watch, watching
from .ota_service import serving
from .test_ota_receiver import NODE, make, online, release, state_of, states


def relay_values(watch: Watch) -> list[str]:
    return [s["relay"] for s in watch.found("state")]


def changes(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def index_of(watch: Watch, kind: str, match) -> int:
    return next(i for i, (k, p, _) in enumerate(watch.messages) if k == kind and match(p))


async def switch_on(watch: Watch) -> None:
    await watch.wait("state", lambda s: s["relay"] == "OFF")  # the boot's state first (state keeps only its newest)
    mark = watch.mark()
    assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
    await watch.wait("state", lambda s: s["relay"] == "ON", since=mark)


async def test_update_waits_while_the_relay_is_on(tmp_path, mosquitto, topics):
    rel = release()
    node = make(tmp_path, mosquitto.url, topics)
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            await switch_on(watch)
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                await svc.publish_offer(NODE)
                await state_of(watch, "verified", timeout=30)
                await asyncio.sleep(2.0)  # the idle check runs every 250 ms: it would have installed by now
                assert states(watch) == ["downloading", "downloaded", "verified"], states(watch)
                assert node.read("otarx.json") is None and node.read("slots.json") is None  # nothing installed
                assert all(i["fw"] == "0.1.0" for i in watch.found("info"))
                off = watch.mark()
                assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"
                try:
                    await state_of(watch, "updated", since=off, timeout=40)
                except AssertionError:
                    raise AssertionError(f"not installed after the OFF: {[(k, p[:150]) for k, p, _ in watch.messages]}"
                                         f"\n{node.output()[-3000:]}") from None
                await watch.wait("info", lambda i: i["fw"] == "1.4.0", since=off, timeout=10)
                await watch.wait("state", lambda s: s["relay"] == "OFF", since=index_of(
                    watch, "info", lambda p: b'"1.4.0"' in p))
            assert states(watch) == ["downloading", "downloaded", "verified", "updating", "updated"], states(watch)
            # Installed only after the OFF: its state came before the updating progress.
            updating_at = index_of(watch, "ota/progress", lambda p: b'"updating"' in p)
            last_on = max(i for i, (k, p, _) in enumerate(watch.messages) if k == "state" and b'"ON"' in p)
            first_off_after = min(i for i, (k, p, _) in enumerate(watch.messages)
                                  if k == "state" and b'"OFF"' in p and i > last_on)
            assert first_off_after < updating_at, (first_off_after, updating_at)
            assert changes(relay_values(watch)) == ["OFF", "ON", "OFF"], relay_values(watch)
            assert set(node.exits) == {75}, node.exits  # restarts the firmware asked for, never a crash
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def test_forced_update_keeps_the_relay_on_through_the_reboot(tmp_path, mosquitto, topics):
    rel = release()
    node = make(tmp_path, mosquitto.url, topics)
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            await switch_on(watch)
            before = watch.found("state")[-1]
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                await svc.publish_offer(NODE, force=True)
                await state_of(watch, "updated", timeout=40)
                booted = index_of(watch, "info", lambda p: b'"1.4.0"' in p)
                after = await watch.wait("state", since=booted, timeout=10)
            assert states(watch) == ["downloading", "downloaded", "verified", "updating", "updated"], states(watch)
            assert set(node.exits) == {75}, node.exits
            # ON before, ON after the reboot, and no OFF in between: the relay never toggled.
            assert after["relay"] == "ON" and after["mode"] == before["mode"], (before, after)
            assert changes(relay_values(watch)) == ["OFF", "ON"], relay_values(watch)
            assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()
