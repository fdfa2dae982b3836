"""Tampering on the wire (docs/ota.md, "Frames" and "Authenticity"): a frame with a flipped byte is refused,
counted and repaired; an offer whose tag does not cover what it says is refused, and so is an older release."""

from __future__ import annotations

import asyncio

import pytest

from nodefleet.contracts.ota import FRAME_HEADER_SIZE as HEADER_SIZE
from nodefleet.contracts.ota import bitmap_bits

from .conftest import Watch, watching
from .ota_service import node_key, serving
from .test_ota_receiver import NODE, make, online, progress, release, state_of, states

FLIPPED_AT = 100
"""Which data byte of the tampered frame is flipped."""


def flipped(frame: bytes) -> bytes:
    out = bytearray(frame)
    out[HEADER_SIZE + FLIPPED_AT] ^= 0xFF
    return bytes(out)


def slot_bytes(node, slot: int = 1) -> bytes:
    path = node.flash_dir / f"slot{slot}.bin"
    return path.read_bytes() if path.exists() else b""


async def held(svc, watch: Watch, timeout: float = 10) -> None:
    """Until the node has handled every frame sent to it (its want's ``got`` caught up with the stream)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        member = svc.stream.members.get(NODE)
        wants = svc.wants_of(NODE)
        if member is not None and wants and wants[-1].session == member.session and wants[-1].got >= member.sent:
            return
        assert loop.time() < deadline, f"the node did not catch up: {states(watch)}"
        await asyncio.sleep(0.05)


# A tampered block on both brokers; a tampered table chunk (every block then waits for its repair) on Mosquitto.
@pytest.mark.parametrize(("broker_name", "kind"), [("mosquitto", "block"), ("amqtt_broker", "block"),
                                                   ("mosquitto", "table")])
async def test_tampered_frame_is_refused_counted_and_repaired(tmp_path, request, topics, broker_name, kind):
    broker = request.getfixturevalue(broker_name)
    rel = release()
    m = rel.manifest
    tables = rel.units() - len(m.blocks)
    unit = tables + 3 if kind == "block" else 0
    node = make(tmp_path, broker.url, topics)
    async with watching(broker, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(broker.url, topics, rel, [NODE]) as svc:

                def damage(u: int, before: int, frame: bytes) -> bytes:
                    if u != unit or before:
                        return frame  # the repair goes intact
                    svc.paused = True  # hold the stream here, to look at the flash before the repair
                    return flipped(frame)

                svc.damage = damage
                await svc.publish_offer(NODE)
                await state_of(watch, "downloading")
                async with asyncio.timeout(15):
                    while svc.sent[unit] == 0:
                        await asyncio.sleep(0.02)
                await held(svc, watch)
                # Refused: nothing of it on flash, and its bit stays clear in the node's want.
                last = svc.wants_of(NODE)[-1]
                assert not bitmap_bits(last.have, rel.units())[unit]
                if kind == "block":
                    start = 3 * m.block_size
                    on_flash = slot_bytes(node)[start:start + m.block_size]
                    bad_byte = rel.frame(unit)[HEADER_SIZE + FLIPPED_AT] ^ 0xFF
                    assert len(on_flash) <= FLIPPED_AT or on_flash[FLIPPED_AT] != bad_byte, "the flipped byte is on flash"
                else:
                    table = node.flash_dir / "ota_table.bin"
                    assert not table.exists() or table.stat().st_size == 0, "a refused table chunk was written"
                    assert slot_bytes(node) == b"", "a block was written before its table chunk"
                svc.paused = False
                await svc.pump()
                done = await state_of(watch, "downloaded", timeout=20)
                assert done["bad"] == 1, done
                assert svc.sent[unit] == 2, svc.sent  # once tampered, once repaired
                assert slot_bytes(node) == rel.image  # the slot holds exactly the image
                seen_bad = [p["bad"] for p in progress(watch) if p["state"] in ("downloading", "downloaded", "verified")]
                assert max(seen_bad) == 1 and seen_bad[-1] == 1, seen_bad
                await state_of(watch, "updated", timeout=40)
            assert states(watch) == ["downloading", "downloaded", "verified", "updating", "updated"], states(watch)
            assert node.read("slots.json")["active"] == 1
            for f in m.files:
                assert (node.flash_dir / "app1" / f.path).read_bytes() == rel.file(f.path)
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


def _wrong_tag(offer: dict) -> dict:
    offer["tag"] = offer["tag"][:10] + ("0" if offer["tag"][10] != "0" else "1") + offer["tag"][11:]
    return offer


def _other_sha256(offer: dict) -> dict:
    offer["sha256"] = ("f" if offer["sha256"][0] != "f" else "e") + offer["sha256"][1:]
    return offer


def _other_size(offer: dict) -> dict:
    offer["size"] -= 1  # the same number of blocks: only the tag can tell
    return offer


def _other_table(offer: dict) -> dict:
    offer["table"] = [("0" if offer["table"][0][0] != "0" else "1") + offer["table"][0][1:]]
    return offer


def _forced(offer: dict) -> dict:
    offer["force"] = True  # force is under the tag too
    return offer


async def test_offer_with_a_wrong_tag_is_refused(tmp_path, broker, topics):
    rel = release()
    node = make(tmp_path, broker.url, topics)
    async with watching(broker, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(broker.url, topics, rel, [NODE]) as svc:
                await svc.publish_offer(NODE, _wrong_tag(svc.offer(NODE).model_dump(mode="json")))
                failed = await state_of(watch, "failed", timeout=15)
                assert failed["code"] == "bad_tag" and failed["release"] == rel.manifest.version, failed
                await assert_untouched(node, watch, svc, refusals=1)
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def test_offer_changed_after_tagging_is_refused(tmp_path, mosquitto, topics):
    # Each field the tag covers, changed after tagging, one offer after the other on the same node. Each is an offer
    # of its own release (its own tag): the node says a refusal once per tag, and stays quiet about the same
    # refused tag again (the retained copy at every connect).
    rel = release()
    node = make(tmp_path, mosquitto.url, topics)
    changes = [_other_sha256, _other_size, _other_table, _forced]
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                for i, change in enumerate(changes):
                    mark = watch.mark()
                    manifest = rel.manifest.model_copy(update={"version": f"1.4.{i}"})
                    offer = manifest.offer(node=NODE, key=node_key(NODE), stream=svc.stream_topic)
                    await svc.publish_offer(NODE, change(offer.model_dump(mode="json")))
                    failed = await state_of(watch, "failed", since=mark, timeout=15)
                    assert failed["code"] == "bad_tag", (change.__name__, failed)
                await assert_untouched(node, watch, svc, refusals=len(changes))
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def test_older_release_without_force_is_not_newer(tmp_path, broker, topics):
    rel = release()
    node = make(tmp_path, broker.url, topics)
    async with watching(broker, topics, NODE) as watch:
        await node.start()
        try:
            info = await online(node, watch)
            assert info["fw"] == "0.1.0"
            async with serving(broker.url, topics, rel, [NODE]) as svc:
                # A correctly tagged offer of a release older than the running 0.1.0.
                older = rel.manifest.model_copy(update={"version": "0.0.9"})
                offer = older.offer(node=NODE, key=node_key(NODE), stream=svc.stream_topic)
                await svc.publish_offer(NODE, offer)
                failed = await state_of(watch, "failed", timeout=15)
                assert failed["code"] == "not_newer" and failed["release"] == "0.0.9", failed
                await assert_untouched(node, watch, svc, refusals=1)
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def assert_untouched(node, watch: Watch, svc, *, refusals: int) -> None:
    """The refused offer wrote nothing, asked for nothing, and the node goes on with its old firmware."""
    mark = watch.mark()
    await asyncio.sleep(2.5)  # longer than the stall timer: a node that took the offer would have sent a want
    assert svc.wants_of(NODE) == [] and not svc.log
    assert [p["state"] for p in progress(watch)] == ["failed"] * refusals, progress(watch)
    for name in ("slot0.bin", "slot1.bin", "slots.json", "ota.json", "ota_table.bin", "otarx.json", "app1"):
        assert not (node.flash_dir / name).exists(), f"{name} on flash after a refused offer"
    ack = await watch.command("switch", {"state": "ON"})
    assert ack["status"] == "ok"
    assert (await watch.wait("state", lambda s: s["relay"] == "ON", since=mark))
    assert node.running and set(node.exits) <= {75}, node.exits  # never a crash
    assert [i["fw"] for i in watch.found("info")] == ["0.1.0"] * len(watch.found("info"))
    assert not watch.invalid, watch.invalid
