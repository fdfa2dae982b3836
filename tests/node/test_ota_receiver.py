"""The OTA receiver of normal mode, end to end: the real firmware on the real interpreter, a real broker, and the
service side played by the pure pieces (release builder, Manifest.offer, encode_frame, services.ota.stream)."""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.ota import Progress
from nodefleet.ota_release import Release, build, read
from nodefleet.sim import FIRMWARE_DIR, HEAP, SimNode

from .conftest import FAST_CONFIG, Watch, watching
from .ota_service import node_key, serving

NODE = "node-1"
OTA_HEAP = HEAP
"""The heap of every OTA test's node: an ESP32's 110K, since the download runs in its own mode (docs/ota.md)."""


@functools.cache
def release(version: str = "1.4.0", block_size: int = 4096) -> Release:
    return build(FIRMWARE_DIR, version=version, target="unix", block_size=block_size)


BROKEN_SELFTEST = "def run(app):\n    raise RuntimeError('self-test broken on purpose')\n"


def broken_release(tmp_path: Path, version: str, selftest: str = BROKEN_SELFTEST) -> Release:
    """Today's firmware with another ``selftest.py`` (by default one that raises), built by ``nodefleet ota build``
    from a modified copy."""
    src = tmp_path / "broken-fw"
    shutil.copytree(FIRMWARE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "build"))
    (src / "selftest.py").write_text(selftest)
    out = tmp_path / "broken.nfr"
    done = subprocess.run([sys.executable, "-m", "nodefleet", "ota", "build", str(src), "--version", version,
                           "--target", "unix", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return read(out)


def make(tmp_path: Path, broker_url: str, topics: Topics, name: str = NODE, *, key: bool = True,
         control: bool = False, **mq: object) -> SimNode:
    node = SimNode(tmp_path / name, name=name, heap=OTA_HEAP, control=control)
    node.provision(broker=broker_url, topic_prefix=topics.prefix(name), keepalive=5, max_backoff=1)
    stored = node.read("mqtt.json")
    if key:
        stored["ota_key"] = node_key(name).hex()
    node.write("mqtt.json", {**stored, **mq})
    node.write("config.json", FAST_CONFIG)
    return node


def progress(watch: Watch, since: int = 0) -> list[dict]:
    out = watch.found("ota/progress", since=since)
    for p in out:
        Progress.model_validate(p)  # everything the node says passes the contract
    return out


def states(watch: Watch, since: int = 0) -> list[str]:
    seen: list[str] = []
    for p in progress(watch, since):
        if not seen or seen[-1] != p["state"]:
            seen.append(p["state"])
    return seen


async def state_of(watch: Watch, state: str, *, since: int = 0, timeout: float = 30) -> dict:
    try:
        return await watch.wait("ota/progress", lambda p: p["state"] == state, since=since, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"no {state} progress; seen {states(watch)}") from None


async def online(node: SimNode, watch: Watch, since: int = 0, timeout: float = 20) -> dict:
    try:
        return await watch.wait("info", since=since, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"node did not come online; output:\n{node.output()[-3000:]}") from None


async def test_one_node_updates_end_to_end(tmp_path, broker, topics):
    rel = release()
    node = make(tmp_path, broker.url, topics)
    async with watching(broker, topics, NODE) as watch:
        await node.start()
        try:
            info = await online(node, watch)
            assert info["fw"] == "0.1.0"
            async with serving(broker.url, topics, rel, [NODE]) as svc:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await svc.publish_offer(NODE)
                await state_of(watch, "verified", timeout=30)
                downloaded = loop.time() - t0
                mark = watch.mark()
                done = await state_of(watch, "updated", timeout=40)
                took = loop.time() - t0
                info = await watch.wait("info", lambda i: i["fw"] == "1.4.0", since=mark, timeout=10)
                # The offer again (a service that missed the word, or restarted): the node says it again, and
                # nothing else happens (no download mode, no restart).
                await asyncio.sleep(0.5)
                again = watch.mark()
                await svc.publish_offer(NODE)
                repeat = await state_of(watch, "updated", since=again, timeout=10)
                await asyncio.sleep(1.0)
            assert states(watch) == ["downloading", "downloaded", "verified", "updating", "updated"], states(watch)
            assert done["release"] == "1.4.0" and done["bytes"] == done["size"] == rel.manifest.size
            assert repeat["release"] == "1.4.0" and repeat["bytes"] == repeat["size"] == rel.manifest.size
            assert states(watch, since=again) == ["updated"]
            # Into the download mode, then into the new firmware.
            assert node.restarts == 2 and info["boot_reason"] == "soft"
            # Every unit went once (loopback loses nothing), none twice beyond the stall timer's resend.
            assert set(svc.sent) == set(range(rel.units())) and sum(svc.sent.values()) <= rel.units() + 2
            slots = node.read("slots.json")
            assert slots["active"] == 1 and not slots["trial"]
            assert node.read("app1/image.json") == {"version": "1.4.0", "sha256": rel.manifest.sha256}
            for f in rel.manifest.files:
                assert (node.flash_dir / "app1" / f.path).read_bytes() == rel.file(f.path)
            # The update's state files go once the broker acknowledged `updated`, a moment after the watcher saw it.
            await wait_for(lambda: node.read("otarx.json") is None, timeout=5)
            assert node.read("ota.json") is None
            print(f"release of {rel.manifest.size} bytes ({rel.units()} frames) on {type(broker).__name__}: "
                  f"downloaded and verified in {downloaded:.2f} s, updated (reboot, trial, self-test) "
                  f"after {took:.2f} s")
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()
