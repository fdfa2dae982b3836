"""Resume after a power cut mid-download (docs/ota.md, "Resume"): the node fetches again at most one window plus
one save interval, from the bitmap it saved on flash."""

from __future__ import annotations

import asyncio

from nodefleet.contracts.ota import bitmap_bits

from .conftest import watching
from .ota_service import serving
from .test_ota_receiver import NODE, make, online, release, state_of, states

WINDOW = 8  # set as ota_window: the bound is one window plus one save interval, so a small window keeps it tight
SAVE_EVERY = 8  # otastore.SAVE_EVERY: units written between bitmap saves
BLOCK = 1024  # small blocks: today's firmware is then 50-odd units, enough to cut in the middle


def units_of(have: str, units: int) -> set[int]:
    return {u for u, bit in enumerate(bitmap_bits(have, units)) if bit}


async def test_sigkill_mid_download_resumes_from_the_saved_bitmap(tmp_path, mosquitto, topics):
    rel = release(block_size=BLOCK)
    units = rel.units()
    assert units >= 4 * (WINDOW + SAVE_EVERY) // 2, units
    node = make(tmp_path, mosquitto.url, topics, ota_window=WINDOW)
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                svc.stop_after(units // 2)
                await svc.publish_offer(NODE)
                async with asyncio.timeout(20):
                    await svc.limit_reached.wait()
                await node.kill()  # the power goes with frames still in flight
                # The service does not know: it spends the dead node's credit left (those frames are lost).
                await svc.resume()
                await asyncio.sleep(0.3)
                before = set(svc.log)
                sent_before = len(svc.log)
                wants_before = svc.wants_of(NODE)
                had = units_of(wants_before[-1].have, units) if wants_before else set()
                saved = node.read("ota.json")
                assert saved is not None and saved["sha256"] == rel.manifest.sha256, saved
                on_flash = units_of(saved["have"], units)
                # Written first, marked after: what the bitmap claims is on flash, and it claims most of what was sent.
                assert on_flash <= before and len(on_flash) >= len(before) - WINDOW - SAVE_EVERY, (on_flash, before)
                for u in on_flash - set(range(units - len(rel.manifest.blocks))):
                    i = u - (units - len(rel.manifest.blocks))
                    got = (node.flash_dir / "slot1.bin").read_bytes()[i * BLOCK:(i + 1) * BLOCK]
                    assert got == rel.image[i * BLOCK:(i + 1) * BLOCK], f"block {i} claimed but not on flash"

                mark = len(svc.wants)
                watch_mark = watch.mark()
                await node.start()
                await online(node, watch, since=watch_mark)
                await state_of(watch, "verified", since=watch_mark, timeout=30)
                after = svc.wants_of(NODE, since=mark)
                assert after, "no want after the restart"
                first = units_of(after[0].have, units)
                assert first == on_flash, "the node did not resume from the bitmap it saved"
                assert all(w.session != wants_before[-1].session for w in after) if wants_before else True
                asked_again = had - first  # units it had told the service it held, asked for again
                resent = svc.log[sent_before:]
                resent_known = [u for u in resent if u in before]
                print(f"{units} units; {sent_before} sent before the kill, {len(had)} announced, {len(on_flash)} "
                      f"saved; after the restart {len(resent)} sent, {len(resent_known)} of them again, "
                      f"{len(asked_again)} announced units asked again")
                assert len(asked_again) <= SAVE_EVERY, sorted(asked_again)
                assert len(resent_known) <= WINDOW + SAVE_EVERY, resent_known
                # Nothing it saved went again, and the rest went about once (the stall timer may repeat one).
                assert not set(resent) & on_flash, sorted(set(resent) & on_flash)
                assert len(resent) <= units - len(on_flash) + 2, (len(resent), units - len(on_flash))
                done = await state_of(watch, "updated", since=watch_mark, timeout=40)
            assert done["bytes"] == rel.manifest.size
            assert (node.flash_dir / "slot1.bin").read_bytes() == rel.image
            assert states(watch)[-3:] == ["verified", "updating", "updated"], states(watch)
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
