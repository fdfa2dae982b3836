"""The firmware's OTA modules on the real MicroPython interpreter (-X heapsize=110K): tag, frames, download, slots."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from nodefleet import contracts
from nodefleet.contracts import Topics, ota
from nodefleet.sim import FIRMWARE_DIR, HEAP, deployed, interpreter

SCRIPT = Path(__file__).with_name("mp_ota.py")
FIXTURES = Path(contracts.__file__).parent / "fixtures"
MASTER = b"nodefleet-fixture-master-key"


def mp(cwd: Path, *args: str, timeout: float = 60, firmware: Path = FIRMWARE_DIR) -> list:
    done = subprocess.run([interpreter(), "-X", f"heapsize={HEAP}", str(SCRIPT), str(firmware), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def release(size: int, *, seed: int = 1, block_size: int = ota.DEFAULT_BLOCK_SIZE) -> tuple[bytes, ota.Manifest]:
    image = random.Random(seed).randbytes(size)
    blocks = [hashlib.sha256(image[i:i + block_size]).hexdigest() for i in range(0, size, block_size)]
    manifest = ota.Manifest(version="1.4.0", size=size, sha256=hashlib.sha256(image).hexdigest(), blocks=blocks,
                            block_size=block_size,
                            files=[ota.ManifestFile(path="app.mpy", offset=0, size=size,
                                                    sha256=hashlib.sha256(image).hexdigest())])
    return image, manifest


def frames(image: bytes, manifest: ota.Manifest) -> list[bytes]:
    """Every frame of a download in the order the ota service streams them: table chunks, then blocks."""
    bs, rid, table = manifest.block_size, manifest.release_id(), manifest.table()
    out = [ota.encode_frame(kind=ota.KIND_TABLE, index=i // bs, release_id=rid, data=table[i:i + bs])
           for i in range(0, len(table), bs)]
    out += [ota.encode_frame(kind=ota.KIND_BLOCK, index=i // bs, release_id=rid, data=image[i:i + bs])
            for i in range(0, len(image), bs)]
    return out


def flash(tmp_path: Path, manifest: ota.Manifest, sequence: list[bytes]) -> Path:
    """A node's flash directory with the offer, and the frames it will receive."""
    node = tmp_path / "flash"
    node.mkdir(exist_ok=True)
    offer = manifest.offer(node="node-1", key=ota.device_key(MASTER, "node-1"), stream=Topics().ota_stream("1.4.0"))
    (node / "offer.json").write_text(offer.model_dump_json())
    (tmp_path / "frames.bin").write_bytes(b"".join(struct.pack(">I", len(f)) + f for f in sequence))
    return node


def test_hmac_matches_cpython(tmp_path):
    rng = random.Random(7)
    # RFC 4231 test cases 1, 2 and 6 (a key longer than the 64-byte block), then random lengths.
    vectors = [(b"\x0b" * 20, b"Hi There"), (b"Jefe", b"what do ya want for nothing?"),
               (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"), (b"", b"")]
    vectors += [(rng.randbytes(rng.choice([1, 16, 32, 63, 64, 65, 100])), rng.randbytes(rng.randrange(0, 600)))
                for _ in range(40)]
    path = tmp_path / "vectors.jsonl"
    path.write_text("".join(json.dumps([k.hex(), m.hex()]) + "\n" for k, m in vectors))
    got = mp(tmp_path, "hmac", str(path))
    assert got == [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in vectors]
    assert got[0] == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"  # RFC 4231, case 1


def test_offer_tag_and_checks_on_the_node(tmp_path):
    offer = json.loads((FIXTURES / "ota_offer.json").read_text())
    key = ota.device_key(MASTER, "ro-purifier").hex()
    base = {"node": "ro-purifier", "key": key, "running": "1.3.2"}
    cases = [
        {**base, "offer": offer},
        {**base, "offer": {**offer, "size": 5001}},
        {**base, "offer": {**offer, "force": True}},
        {**base, "offer": {**offer, "tag": "00" * 32}},
        {**base, "node": "kitchen", "offer": offer},
        {**base, "key": ota.device_key(MASTER, "kitchen").hex(), "offer": offer},
        {**base, "running": "1.4.0", "offer": offer},
        {**base, "running": "1.10.0", "offer": offer},
        {**base, "running": "1.4.0-rc.2", "offer": offer},
        {**base, "capacity": 4096, "offer": offer},
        {**base, "offer": {**offer, "blocks": 3}},
        {**base, "offer": {k: v for k, v in offer.items() if k != "table"}},
    ]
    # A forced downgrade is accepted only when the force flag is under the tag.
    forced = ota.Manifest.model_validate_json((FIXTURES / "ota_manifest.json").read_text()).offer(
        node="ro-purifier", key=bytes.fromhex(key), stream=offer["stream"], force=True)
    cases.append({**base, "running": "1.9.0", "offer": forced.model_dump()})
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    assert mp(tmp_path, "offer", str(path)) == [
        None, "bad_tag", "bad_tag", "bad_tag", "bad_tag", "bad_tag", "not_newer", "not_newer", None, "no_space",
        "bad_offer", "bad_offer", None]


def test_table_frame_fixture_decodes_on_the_node(tmp_path):
    (got,) = mp(tmp_path, "frame", str(FIXTURES / "ota_table_frame.bin"), str(FIXTURES / "ota_offer.json"))
    manifest = ota.Manifest.model_validate_json((FIXTURES / "ota_manifest.json").read_text())
    assert got == {"kind": ota.KIND_TABLE, "index": 0, "rid": manifest.release_id().hex(), "n": 64,
                   "digest_ok": True}


def test_download_refuses_bad_frames_and_writes_only_good_blocks(tmp_path):
    image, manifest = release(30_000)  # 8 blocks, the last one short, and one table chunk
    good = frames(image, manifest)
    corrupt = bytearray(good[3])
    corrupt[-1] ^= 1
    other_release = ota.encode_frame(kind=ota.KIND_BLOCK, index=2, release_id=b"\x01" * 8, data=image[8192:12288])
    sequence = [good[2],  # a block before its table chunk: not checkable yet
                *good[:2], bytes(corrupt), other_release, good[4][:-10], good[4], good[4],
                ota.encode_frame(kind=ota.KIND_BLOCK, index=99, release_id=manifest.release_id(), data=b"x"),
                *good[5:]]
    node = flash(tmp_path, manifest, sequence)
    (first,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "1")  # the bitmap saved after each block
    assert first["results"] == {"early": 1, "ok": 7, "bad": 3, "foreign": 1, "dup": 1}
    assert first["missing"] == [2, 3] and not first["complete"] and first["bad"] == 3
    # The corrupt block was not written: its place in the slot is still empty.
    slot = (node / "slot1.bin").read_bytes()
    assert slot[2 * 4096:3 * 4096] == bytes(4096) and slot[3 * 4096:4 * 4096] == image[3 * 4096:4 * 4096]
    # The saved bitmap says what is missing; the repairs complete the image, which verifies.
    want = ota.Want.model_validate(first["want"])
    assert want.missing(len(good)) == [2, 3]
    node_files = flash(tmp_path, manifest, [good[u] for u in want.missing(len(good))])
    (second,) = mp(node_files, "download", str(tmp_path / "frames.bin"), "-1", "8")
    assert second["resumed"] and second["start"] == 7 and second["results"] == {"ok": 2}
    assert second["complete"] and second["verified"] and second["bytes"] == len(image)
    # What the node will publish passes the contract's models.
    assert ota.Progress.model_validate(first["progress"]).bytes == 5 * 4096 + len(image) - 7 * 4096
    assert ota.Progress.model_validate(second["progress"]).state == "verified"
    assert (node / "slot1.bin").read_bytes() == image


def test_resume_after_a_power_cut_keeps_the_saved_bitmap(tmp_path):
    image, manifest = release(100_000, seed=3)  # 25 blocks + 1 table chunk
    good = frames(image, manifest)
    node = flash(tmp_path, manifest, good)
    cut = 13  # frames handled when the power goes: 13 written, 8 of them saved
    proc = subprocess.Popen([interpreter(), "-X", f"heapsize={HEAP}", str(SCRIPT), str(FIRMWARE_DIR), "download",
                             str(tmp_path / "frames.bin"), str(cut), "8"], cwd=node, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline()) == {"stopped": cut, "count": cut}
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    saved = json.loads((node / "ota.json").read_text())
    units = len(good)
    assert ota.bitmap_bits(saved["have"], units) == [u < 8 for u in range(units)]
    (after,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "8")
    # Resumed from the 8 saved units: the 5 written after the last save come again, nothing before them.
    assert after["resumed"] and after["start"] == 8
    assert after["results"] == {"dup": 8, "ok": units - 8}
    assert after["verified"] and (node / "slot1.bin").read_bytes() == image


@pytest.mark.parametrize("with_firmware", [False, True], ids=["ota-alone", "with-normal-mode-modules"])
def test_peak_heap_of_verifying_and_writing_4k_blocks(tmp_path, with_firmware):
    image, manifest = release(256 * 1024, seed=5)  # 64 blocks of 4 KiB
    node = flash(tmp_path, manifest, frames(image, manifest))
    extra = ["--with-firmware"] if with_firmware else []
    (got,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "8", *extra,
                # With the rest of the firmware loaded as a device loads it (.mpy; see nodefleet.sim.deployed).
                firmware=deployed() if with_firmware else FIRMWARE_DIR)
    assert got["verified"] and got["results"] == {"ok": 65}
    kb = {k: round(got[k] / 1024, 1) for k in ("base", "alloc_max", "verify_alloc", "heap")}
    peak = got["base"] + max(got["alloc_max"], got["verify_alloc"])
    print(f"OTA heap ({'with' if with_firmware else 'without'} the normal-mode modules), KiB: live {kb['base']} "
          f"(frame buffer included), per frame at most {kb['alloc_max']}, whole-image verify {kb['verify_alloc']}, "
          f"peak {peak / 1024:.1f} of {kb['heap']}; {got['us_per_frame']} us per 4 KiB frame (check + write)")
    # A frame is checked and written in place (no copy); the most is a frame that also saves the bitmap.
    # Verifying reads the slot back in 4 KiB chunks into the same buffer; the sim HAL opens the file per chunk.
    assert got["alloc_max"] < 4096 and got["verify_alloc"] / 64 < 512
    assert got["heap"] - peak > 20 * 1024


def test_hmac_cost_on_the_interpreter(tmp_path):
    key = ota.device_key(MASTER, "ro-purifier").hex()
    (got,) = mp(tmp_path, "hmacbench", str(FIXTURES / "ota_offer.json"), key, "ro-purifier", "2000")
    assert got["check"] is None
    print(f"HMAC-SHA256 of a {got['msg_bytes']}-byte offer: {got['hmac_us']:.1f} us, {got['hmac_alloc']} B "
          f"allocated; whole offer check {got['check_alloc']} B")
    assert got["hmac_alloc"] < 2048


def test_sim_slots_trial_boot_and_rollback(tmp_path):
    steps = mp(tmp_path, "slots")
    assert steps == [
        ["boot", [0, False, None]],
        ["select", 0],
        ["trial boot", [1, True, None]],
        ["unconfirmed boot", [0, False, "trial boot not confirmed"]],
        ["trial boot", [1, True, None]],
        ["confirmed boot", [1, False, None]],
        ["next boot", [1, False, None]],
        ["trial boot", [0, True, None]],
        ["after rollback", [1, False, "self-test failed"]],
        ["slot 1", "new app 2!"],
        ["too big", "image of 1572865 bytes, slot holds 1572864"],
    ]


def test_a_real_release_downloads_and_verifies_on_the_node(tmp_path):
    from nodefleet.ota_release import build

    rel = build(FIRMWARE_DIR, version="1.4.0", target="unix")
    sequence = [rel.frame(u) for u in range(rel.units())]
    assert sequence == frames(rel.image, rel.manifest)
    rng = random.Random(11)
    rng.shuffle(sequence)  # any order: blocks before their table chunk wait for a repair
    node = flash(tmp_path, rel.manifest, sequence)
    (first,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "8")
    in_ram = ota.Want.model_validate(first["want"]).missing(len(sequence))
    assert first["results"].get("bad", 0) == 0 and first["results"]["ok"] == len(sequence) - len(in_ram)
    # The process ends as after a reboot: the next run asks for what the bitmap on flash lacks.
    saved = ota.bitmap_bits(json.loads((node / "ota.json").read_text())["have"], len(sequence))
    missing = [u for u, have in enumerate(saved) if not have]
    assert set(in_ram) <= set(missing) and len(missing) - len(in_ram) < 8
    flash(tmp_path, rel.manifest, [rel.frame(u) for u in missing])
    (second,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "8")
    assert second["complete"] and second["verified"] and (node / "slot1.bin").read_bytes() == rel.image
    # The modules come out of the slot as the builder compiled them.
    assert mp(node, "unpack", "app1") == [{"files": len(rel.manifest.files)}]
    for f in rel.manifest.files:
        assert (node / "app1" / f.path).read_bytes() == rel.file(f.path), f.path
    # ... and the interpreter loads them (xtensawin bytecode runs on the unix port).
    code = ("import sys; sys.path.insert(0, 'app1'); import ota, logic; from hal import slots; "
            "print(ota.__file__, slots.SLOT_FORMAT, ota.version_key('1.4.0-rc.1') < ota.version_key('1.4.0'))")
    done = subprocess.run([interpreter(), "-X", f"heapsize={HEAP}", "-c", code],
                          cwd=node, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["app1/ota.mpy", "nfi1", "True"], done.stdout + done.stderr


@pytest.mark.parametrize("damage", ["table file gone", "bitmap not base64"])
def test_a_saved_download_that_cannot_be_trusted_starts_afresh(tmp_path, damage):
    image, manifest = release(20_000, seed=9)
    good = frames(image, manifest)
    node = flash(tmp_path, manifest, good[:4])
    (first,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "1")
    assert first["count"] == 4
    if damage == "table file gone":
        (node / "ota_table.bin").unlink()  # the bitmap claims a table chunk the flash no longer holds
    else:
        saved = json.loads((node / "ota.json").read_text())
        (node / "ota.json").write_text(json.dumps({**saved, "have": "!!"}))
    flash(tmp_path, manifest, good)
    (again,) = mp(node, "download", str(tmp_path / "frames.bin"), "-1", "8")
    assert not again["resumed"] and again["start"] == 0 and again["results"] == {"ok": len(good)}
    assert again["verified"]
