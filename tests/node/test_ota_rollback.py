"""A release whose self-test fails (docs/ota.md, "The receiver", trial): the node boots it on trial, rolls back,
reports ``rolled_back`` from the old firmware, and refuses that image from then on."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import watching
from .ota_service import serving
from .test_ota_receiver import (
    BROKEN_SELFTEST,
    NODE,
    broken_release,
    make,
    online,
    progress,
    state_of,
    states,
)

FAILING_SELFTEST = "def run(app):\n    return 'relay driver check failed on purpose'\n"


@pytest.mark.parametrize(("selftest", "reason"), [(FAILING_SELFTEST, "relay driver check failed on purpose"),
                                                  (BROKEN_SELFTEST, "self-test broken on purpose")],
                         ids=["fails", "raises"])
async def test_failed_self_test_rolls_back_and_refuses_the_release(tmp_path, mosquitto, topics, selftest, reason):
    rel = broken_release(tmp_path, "1.4.0", selftest)
    node = make(tmp_path, mosquitto.url, topics)
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                await svc.publish_offer(NODE)
                back = await state_of(watch, "rolled_back", timeout=60)
                assert back["code"] == "self_test" and reason in back["reason"], back
                assert back["release"] == "1.4.0"
                assert states(watch) == ["downloading", "downloaded", "verified", "updating", "rolled_back"], \
                    states(watch)
                # It did boot the new firmware (on trial), then the old one again.
                trial = next(i for i, (k, p, _) in enumerate(watch.messages) if k == "info" and b'"1.4.0"' in p)
                await watch.wait("info", lambda i: i["fw"] == "0.1.0", since=trial, timeout=10)
                fws = [i["fw"] for i in watch.found("info")]
                assert fws[0] == "0.1.0" and "1.4.0" in fws and fws[-1] == "0.1.0", fws
                assert set(node.exits) == {75}, node.exits  # restarts the firmware asked for, never a crash
                slots = node.read("slots.json")
                assert slots["active"] == 0 and not slots["trial"], slots
                await asyncio.sleep(0.5)  # the report is acknowledged: then the image is refused for good
                assert node.read("otarx.json") == {"phase": "refuse", "sha256": rel.manifest.sha256}

                # Refused afterwards: the retained offer again, a forced offer of the same image, and after a reboot.
                sent, wants = len(svc.log), len(svc.wants)
                mark = watch.mark()
                await svc.publish_offer(NODE)
                await svc.publish_offer(NODE, force=True)
                await asyncio.sleep(2.5)  # past the stall timer: a node downloading would have sent a want
                await node.kill()
                await node.start()
                await online(node, watch, since=mark)
                await asyncio.sleep(2.5)
                assert progress(watch, since=mark) == [], progress(watch, since=mark)
                assert len(svc.log) == sent and svc.wants_of(NODE, since=wants) == []
                assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
                info = watch.found("info", since=mark)
                assert info and all(i["fw"] == "0.1.0" for i in info), info
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()
