"""The LAN upload (docs/ota.md, "Over the LAN"): POST /api/ota restarts the node into the download mode, which takes
a node upload file (.nfu: the offer the ota service tagged for this node, the block table, the image) on its local
port and then goes the MQTT path's way: every block checked, verify, idle check, A/B switch, trial, confirm.
The real firmware on the real interpreter at 110K; the backend's side is Manifest.offer with the node's key."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest
from conftest import wait_for

from nodefleet.ota_release import encode_upload

from .conftest import watching
from .http import poll, request
from .ota_service import node_key
from .test_ota_receiver import NODE, make, online, release, state_of, states

LAN_FLOOR = 15 * 1024
"""What the download mode keeps free while it takes an upload, its MQTT session up: 16.5-16.8 KB measured. Below
the firmware's 20 KB goal (test_heap.py): the upload's module (7.6 KB loaded) comes on top of the download mode's;
docs/ota.md says so."""
GOAL = 20 * 1024
"""test_heap.GOAL: the trial boot after a LAN upload keeps it as after an MQTT download."""


def upload_file(version: str = "1.4.0", *, node: str = NODE, key: bytes | None = None, force: bool = False) -> bytes:
    rel = release(version)
    offer = rel.manifest.offer(node=node, key=key or node_key(node), stream="lan", force=force)
    return encode_upload(rel, offer)


async def into_download_mode(port: int) -> dict:
    status, answer = await request(port, "POST", "/api/ota")
    assert status == 202, answer
    return await poll(port, "/api/ota", lambda a: a.get("mode") == "download", timeout=20)


async def back_in_normal_mode(port: int) -> dict:
    return await poll(port, "/api/ota", lambda a: a.get("mode") == "normal", timeout=40)


async def test_upload_over_the_lan_updates_the_node(tmp_path, broker, topics):
    body = upload_file()
    node = make(tmp_path, broker.url, topics)
    async with watching(broker, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            port = node.http_port
            assert (await request(port, "GET", "/api/ota"))[1]["fw"] == "0.1.0"
            waiting = await into_download_mode(port)
            assert waiting["state"] == "waiting", waiting
            t0 = asyncio.get_running_loop().time()
            status, answer = await request(port, "POST", "/api/ota", body, timeout=30)
            took = asyncio.get_running_loop().time() - t0
            assert status == 200 and answer["state"] in ("verified", "updating"), answer
            assert answer["bytes"] == answer["size"] == len(release().image) and answer["bad"] == 0
            await state_of(watch, "updated", timeout=60)
            whole = asyncio.get_running_loop().time() - t0
            seen = states(watch)
            assert seen[-3:] == ["verified", "updating", "updated"], seen  # only the newest progress waits to go out
            slots = node.read("slots.json")
            assert slots["active"] == 1 and not slots["trial"]
            # `updated` acknowledged by the broker: then the update's state file goes.
            await wait_for(lambda: node.read("otarx.json") is None, timeout=5)
            assert node.read("ota_offer.json") is None
            # The trial's self-test passed with room to spare: the new firmware's low-water mark since its boot
            # (its trial included, as after an MQTT update): the 20 KB goal, far above the self-test's 8 KB floor.
            tele = (await watch.wait("telemetry", since=watch.mark(), timeout=10))["readings"]
            assert tele["heap_min"] >= GOAL, tele
            # Only now the page (its 7 KB come in with a visit): what the upload left there.
            done = (await request(port, "GET", "/api/ota"))[1]
            assert done["mode"] == "normal" and done["fw"] == "1.4.0" and done["ota"] == "updated", done
            print(f"LAN upload of {len(body)} bytes in {took:.2f} s, updated {whole:.2f} s after it began; download mode heap low {answer['heap_min']} B; "
                  f"trial firmware heap low {tele['heap_min']} B")
            assert answer["heap_min"] >= LAN_FLOOR, answer
        except BaseException:
            print(node.output()[-4000:])
            raise
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


def _tamper_block(body: bytes) -> bytes:
    (n,) = struct.unpack_from(">I", body, 4)
    out = bytearray(body)
    out[8 + n + len(release().manifest.blocks) * 32 + 5000] ^= 1  # a byte of block 1
    return bytes(out)


@pytest.mark.parametrize(("case", "status", "code"), [
    ("wrong_tag", 400, "bad_tag"), ("tampered_block", 400, "bad_block"), ("truncated", 400, "bad_length"),
    ("oversized", 400, "bad_length"), ("body_stops", 408, "truncated"), ("older", 409, "not_newer"),
    ("no_space", 413, "no_space")])
async def test_bad_upload_is_refused_and_nothing_is_installed(tmp_path, mosquitto, topics, case, status, code):
    body = {"wrong_tag": lambda: upload_file(key=b"k" * 32), "tampered_block": lambda: _tamper_block(upload_file()),
            "truncated": lambda: upload_file()[:-3000], "body_stops": upload_file,
            "oversized": lambda: upload_file() + bytes(100), "older": lambda: upload_file("0.0.9"),
            "no_space": upload_file}[case]()
    node = make(tmp_path, mosquitto.url, topics, ota_lan_read_s=1)
    if case == "no_space":
        node.env["NF_SLOT_CAPACITY"] = "4096"  # a slot smaller than the image
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            port = node.http_port
            await into_download_mode(port)
            if case == "body_stops":
                # The whole length announced, a third sent, then silence with the connection open.
                head = f"POST /api/ota HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                got, answer = await request(port, "POST", "/api/ota", raw=head + body[:len(body) // 3])
            else:
                got, answer = await request(port, "POST", "/api/ota", body)
            assert got == status and answer["code"] == code, answer
            assert answer["error"], answer
            mark = watch.mark()  # the answer goes out before the node leaves the download mode
            back = await back_in_normal_mode(port)
            assert back["fw"] == "0.1.0" and back["state"] == "failed" and back["code"] == code, back
            # Nothing switched: the active slot is the old one, no install was begun.
            slots = node.read("slots.json")
            assert slots is None or slots["active"] == 0, slots
            assert node.read("otarx.json") is None and node.read("ota_offer.json") is None
            if code not in ("bad_tag", "bad_length"):  # else the offer is not known good: nothing said about it
                assert states(watch)[-1] == "failed", states(watch)
            log = await watch.wait("log", lambda e: e.get("code") == "ota_" + code, timeout=10)
            assert code in log["code"]
            # The node works on, online again in normal mode: a command still switches the relay.
            await online(node, watch, since=mark)
            await asyncio.sleep(1)  # its subscriptions acknowledged: until then a command counts as replayed
            ack = await watch.command("switch", {"state": "ON"})
            assert ack["status"] == "ok", ack
        except BaseException:
            print(node.output()[-4000:])
            raise
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def test_web_password_guards_the_upload(tmp_path, mosquitto, topics):
    node = make(tmp_path, mosquitto.url, topics)
    node.write("config.json", {**node.read("config.json"), "web_password": "s3cret"})
    login = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            port = node.http_port
            assert (await request(port, "POST", "/api/ota"))[0] == 401
            assert (await request(port, "POST", "/api/ota", headers=login))[0] == 202
            await poll_auth(port, login)
            # In the download mode too: no password, no upload; the password alone does not make a file installable.
            assert (await request(port, "POST", "/api/ota", upload_file()))[0] == 401
            got, answer = await request(port, "POST", "/api/ota", upload_file(key=b"k" * 32), headers=login)
            assert got == 400 and answer["code"] == "bad_tag", answer
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def poll_auth(port: int, login: dict) -> None:
    for _ in range(100):
        try:
            got, answer = await request(port, "GET", "/api/ota", headers=login, timeout=2)
            if got == 200 and answer.get("mode") == "download":
                return
        except (OSError, TimeoutError, ValueError, IndexError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the node did not enter the download mode")
