"""Power cuts at random points of an update (docs/ota.md, "Resume" and "On the node"): SIGKILL during the
download, the verify, the switch and the trial boot. After each cut the node boots, comes online and answers a
command, on the old firmware or the new one (never neither); what it does next follows from what was on flash at
the cut. At the end it is updated.

The cut points come from a seeded random generator; the seed is printed, and ``NF_OTA_SEED=<seed>`` repeats a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
from pathlib import Path

from nodefleet.sim import FIRMWARE_DIR, deployed

from .conftest import Watch, watching
from .ota_service import OtaService, serving
from .test_ota_receiver import NODE, make, online, release, state_of

ITERATIONS = 12
PHASES = ("download", "verify", "switch", "trial")
BLOCK = 1024  # 50-odd units, so a cut can land anywhere in the download
CUT_TIMEOUT = 30.0  # seconds an iteration may wait for its cut point


def seen(watch: Watch, state: str, release: str, since: int) -> bool:
    return bool(watch.found("ota/progress", lambda p: p["state"] == state and p["release"] == release, since=since))


class Cuts:
    def __init__(self, node, watch: Watch, rng: random.Random) -> None:
        self.node = node
        self.watch = watch
        self.rng = rng

    async def until(self, ready, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CUT_TIMEOUT
        while not ready():
            if loop.time() > deadline:
                raise AssertionError(f"no {what} within {CUT_TIMEOUT} s; output:\n{self.node.output()[-3000:]}")
            await asyncio.sleep(0.01)

    async def cut(self, phase: str, svc: OtaService, release: str, target_slot: int, on_trial: bool) -> str:
        """Wait for ``phase`` (or any later one, if the node is past it), a random moment more, then SIGKILL."""
        mark, sent = self.watch.mark(), len(svc.log)
        w, v = self.watch, release

        def past(*states: str) -> bool:
            return any(seen(w, s, v, mark) for s in states)

        if on_trial:
            # We booted it into its trial: cut somewhere in the boot, the connect or the self-test.
            await asyncio.sleep(self.rng.uniform(0.0, 1.2))
        elif phase == "download":
            k = self.rng.randint(1, 30)
            await self.until(lambda: len(svc.log) - sent >= k or past("verified", "updating"), f"{k} frames")
        elif phase == "verify":
            await self.until(lambda: past("downloaded", "verified", "updating"), "downloaded")
            await asyncio.sleep(self.rng.uniform(0.0, 0.25))
        elif phase == "switch":
            await self.until(lambda: past("verified", "updating"), "verified")
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        else:
            # The trial boot has begun once the boot stub counted it (hal/simslot.py's slot_boot).
            def booting() -> bool:
                slots = self.node.read("slots.json") or {}
                return slots.get("active") == target_slot and slots.get("trial") and slots.get("tries", 0) >= 1
            await self.until(booting, "the update's reboot")
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        await power_cut(self.node)
        return f"{phase}, {len(svc.log) - sent} frames sent"


async def power_cut(node) -> None:
    """SIGKILL the node; also the process the launcher may just have started (the firmware's own restart)."""
    await node.kill()
    while node.running:
        await node.kill()
    for pid in strays(node):
        os.kill(pid, signal.SIGKILL)  # started by this test's launcher, caught mid-spawn
        raise AssertionError(f"a second interpreter (pid {pid}) ran on {node.flash_dir} after the cut")


def strays(node) -> list[int]:
    """Interpreters this process started that still run on the node's flash directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and Path(os.readlink(proc / "cwd")) == node.flash_dir.resolve():
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def on_flash(node, target_slot: int) -> str:
    """Where the cut left the update, read from the dead node's flash: what must happen at the next boot."""
    slots = node.read("slots.json") or {}
    if slots.get("active") == target_slot:
        if not slots.get("trial"):
            return "confirmed"  # marked valid: the new firmware stays
        return "trial" if slots.get("tries", 0) == 0 else "rollback"  # the second boot of a trial goes back
    return "old"  # not selected: the old firmware runs and the retained offer carries on


async def test_power_cuts_never_brick_the_node(tmp_path, mosquitto, topics):
    seed = int(os.environ.get("NF_OTA_SEED") or random.randrange(2 ** 32))
    print(f"\npower cuts: seed {seed} (NF_OTA_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    node = make(tmp_path, mosquitto.url, topics)
    versions = (f"1.4.{n}" for n in range(ITERATIONS + 2))
    running, running_slot = "0.1.0", 0
    history: list[str] = []
    async with watching(mosquitto, topics, NODE) as watch, contextlib.AsyncExitStack() as stack:

        async def offer_next():
            await stack.aclose()
            rel = release(next(versions), block_size=BLOCK)
            svc = await stack.enter_async_context(serving(mosquitto.url, topics, rel, [NODE]))
            await svc.publish_offer(NODE)
            return rel, svc

        await node.start()
        try:
            await online(node, watch)
            cuts = Cuts(node, watch, rng)
            rel, svc = await offer_next()
            on_trial = False
            for i in range(ITERATIONS):
                target = rel.manifest.version
                begun = watch.mark()
                phase = "trial" if on_trial else PHASES[i % len(PHASES)]
                where = await cuts.cut(phase, svc, target, 1 - running_slot, on_trial)
                expect = on_flash(node, 1 - running_slot)
                history.append(f"{i}: {running} -> {target}: cut at {where}; on flash: {expect}")
                print(history[-1])

                mark = watch.mark()
                await node.start()
                try:
                    await watch.wait("status", lambda s: s == "online", since=mark, timeout=20)
                except TimeoutError:
                    raise AssertionError(f"bricked after {history}:\n{node.output()[-3000:]}") from None
                info = await online(node, watch, since=mark)
                try:
                    ack = await watch.command("switch", {"state": "OFF"}, timeout=10)
                except TimeoutError:
                    raise AssertionError(f"no answer to a command after {history}; since the restart: "
                                         f"{[(k, p[:120]) for k, p, _ in watch.messages[mark:]]}\n"
                                         f"{node.output()[-3000:]}") from None
                assert ack["status"] == "ok", (history, ack)
                new = expect in ("trial", "confirmed")
                assert info["fw"] == (target if new else running), (history, info)
                on_trial = False
                if expect == "rollback":
                    back = await state_of(watch, "rolled_back", since=mark, timeout=10)
                    assert back["release"] == target and back["code"] == "not_confirmed", (history, back)
                    rel, svc = await offer_next()  # that image is refused now: a newer release
                elif expect == "confirmed":
                    await watch.wait("ota/progress", lambda p, v=target: p["state"] == "updated" and p["release"] == v,
                                     since=begun, timeout=10)
                    running, running_slot = target, 1 - running_slot
                    rel, svc = await offer_next()
                elif expect == "trial":
                    on_trial = True
                else:
                    assert not seen(watch, "rolled_back", target, mark), \
                        f"rolled_back reported though the new slot was never selected: {history}"
                    assert not seen(watch, "failed", target, begun), (history, watch.found("ota/progress"))

            # No more cuts: the update in hand completes (after a trial cut: that trial, or a newer release).
            target = rel.manifest.version
            try:
                await watch.wait("ota/progress", lambda p: p["state"] == "updated" and p["release"] == target,
                                 since=begun, timeout=40)
            except TimeoutError:
                raise AssertionError(f"not updated after {history}: {watch.found('ota/progress', since=begun)}\n"
                                     f"{node.output()[-3000:]}") from None
            assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
            fw = {i["fw"] for i in watch.found("info", since=begun)}
            assert target in fw, (history, fw)
            slots = node.read("slots.json")
            assert not slots["trial"] and node.read(f"app{slots['active']}/image.json")["version"] == target
            assert not watch.invalid, watch.invalid
            print(f"updated to {target} after {ITERATIONS} power cuts")
        finally:
            await stack.aclose()
            await node.stop()


CUT_AT_SELECT = """def slot_select():
    try:
        os.stat("cut_at_select")
    except OSError:
        pass
    else:
        os.remove("cut_at_select")
        import sys

        sys.exit(9)  # the power goes while the switch is being written: nothing of it lands
"""


def cutting_firmware(tmp_path: Path) -> Path:
    """Today's firmware whose sim HAL loses power inside ``slot_select()`` once, when the flash holds a flag."""
    src = tmp_path / "cut-fw"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "build"))
    slot = src / "hal" / "simboot.py"
    text = slot.read_text()
    assert "\ndef slot_select():\n" in text
    slot.write_text(text.replace("\ndef slot_select():\n", "\n" + CUT_AT_SELECT + "    _select()\n\n\ndef _select():\n"))
    return deployed(src)


async def test_cut_during_the_switch_after_an_earlier_rollback(tmp_path, mosquitto, topics):
    """The power goes inside ``slot_select()`` (on an ESP32, ``set_boot()`` checks the whole image first), on a node
    whose slots still carry the marker of an earlier rollback of that slot. The new firmware never ran, so the node
    must not report it ``rolled_back`` nor refuse it: it installs it after the reboot."""
    rel = release()
    m = rel.manifest
    node = make(tmp_path, mosquitto.url, topics)
    node.firmware_dir = cutting_firmware(tmp_path)
    # What hal/simslot.py's slot_boot leaves after an earlier trial of slot 1 that never confirmed, and the
    # refusal of that earlier image that followed its report.
    node.write("slots.json", {"active": 0, "previous": 0, "trial": False, "tries": 0,
                              "rolled_back": {"from": 1, "reason": "trial boot not confirmed"}})
    node.write("otarx.json", {"phase": "refuse", "sha256": "ab" * 32})
    node.write("cut_at_select", {})
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            async with serving(mosquitto.url, topics, rel, [NODE]) as svc:
                await svc.publish_offer(NODE)
                await state_of(watch, "updating", timeout=30)
                async with asyncio.timeout(10):
                    while 9 not in node.exits:  # the cut in slot_select
                        await asyncio.sleep(0.02)
                assert not (node.flash_dir / "cut_at_select").exists()
                await power_cut(node)
                slots = node.read("slots.json")
                assert slots["active"] == 0 and not slots["trial"], slots
                mark = watch.mark()
                await node.start()
                info = await online(node, watch, since=mark)
                assert info["fw"] == "0.1.0"
                await asyncio.sleep(1.0)
                bad = watch.found("ota/progress", lambda p: p["state"] in ("rolled_back", "failed"), since=mark)
                assert bad == [], f"{m.version} never ran, yet the node reports {bad}"
                await state_of(watch, "updated", since=mark, timeout=40)
                await watch.wait("info", lambda i: i["fw"] == m.version, since=mark, timeout=10)
            assert not watch.invalid, watch.invalid
        finally:
            await node.stop()
