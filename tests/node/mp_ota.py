# Runs on MicroPython: the firmware's OTA modules (ota, otastore, the sim HAL's slots); JSON lines out.
# micropython mp_ota.py FIRMWARE_DIR MODE ARGS...   (cwd = the node's flash directory)
import gc
import json
import struct
import sys
import time

sys.path.insert(0, sys.argv[1])
mode = sys.argv[2]
args = sys.argv[3:]
# The frame buffer comes first, while the heap is whole: after the imports 4 KiB in one piece may not be free.
FRAME = bytearray(20 + 4096)
if "--with-firmware" in args:
    args.remove("--with-firmware")
    import otamode  # noqa: F401  the download mode's modules, which a real node holds while it downloads

from binascii import hexlify, unhexlify  # noqa: E402

from hal import slotboot, slots  # noqa: E402
import ota  # noqa: E402


def out(obj):
    print(json.dumps(obj))


if mode == "hmac":
    with open(args[0]) as f:
        for line in f:
            key, msg = json.loads(line)
            out(hexlify(ota.hmac_sha256(unhexlify(key), unhexlify(msg))).decode())

elif mode == "hmacbench":
    # Time and heap of one tag check: HMAC-SHA256 of a real offer's signed bytes with a 32-byte key.
    with open(args[0]) as f:
        offer = json.load(f)
    key, node, n = unhexlify(args[1]), args[2], int(args[3])
    msg = ota.auth_message(node, offer)
    gc.collect()
    before = gc.mem_alloc()
    ota.hmac_sha256(key, msg)
    alloc = gc.mem_alloc() - before
    t0 = time.ticks_us()
    for _ in range(n):
        ota.hmac_sha256(key, msg)
    us = time.ticks_diff(time.ticks_us(), t0) / n
    gc.collect()
    before = gc.mem_alloc()
    err = ota.check_offer(offer, node, key, "1.3.0", "nfi1", 1 << 20)
    out({"msg_bytes": len(msg), "hmac_us": us, "hmac_alloc": alloc, "check_alloc": gc.mem_alloc() - before,
         "check": err})

elif mode == "offer":
    # Each case: the fixture offer with one change, checked as node args[1] with key args[2].
    with open(args[0]) as f:
        cases = json.load(f)
    for case in cases:
        err = ota.check_offer(case["offer"], case["node"], unhexlify(case["key"]), case["running"], "nfi1",
                              case.get("capacity", 1 << 20))
        out(err and err[0])

elif mode == "frame":
    with open(args[0], "rb") as f:
        raw = f.read()
    with open(args[1]) as f:
        offer = json.load(f)
    import hashlib

    kind, index, rid, n = ota.header(raw)
    ok = ota.equal(hashlib.sha256(raw[ota.HEADER_SIZE:]).digest(), unhexlify(offer["table"][index]))
    out({"kind": kind, "index": index, "rid": hexlify(rid).decode(), "n": n, "digest_ok": ok})

elif mode == "download":
    # Feed the frames of args[0] (u32 length + frame, repeated) to a Download of ./offer.json;
    # after args[1] frames (if >= 0) report and wait to be killed: a power cut at that point.
    gc.collect()  # as the receiver will: the modules load in large pieces, collect the garbage between first
    import otarx  # its progress payload, as the receiver sends it
    import otastore

    stop, save_every = int(args[1]), int(args[2])
    with open("offer.json") as f:
        offer = json.load(f)
    slotboot.slot_boot()
    d = otastore.Download(offer, save_every)
    start = d.count
    buf = FRAME if len(FRAME) >= ota.HEADER_SIZE + d.bs else bytearray(ota.HEADER_SIZE + d.bs)
    mv = memoryview(buf)
    results = {}
    alloc_max = 0
    gc.collect()
    base = gc.mem_alloc()
    handled = 0
    busy = 0
    with open(args[0], "rb") as f:
        head = bytearray(4)
        while f.readinto(head) == 4:
            n = struct.unpack(">I", head)[0]
            frame = mv[:n]
            f.readinto(frame)
            gc.collect()
            before = gc.mem_alloc()
            t0 = time.ticks_us()
            r = d.handle(frame)
            busy += time.ticks_diff(time.ticks_us(), t0)
            alloc_max = max(alloc_max, gc.mem_alloc() - before)
            results[r] = results.get(r, 0) + 1
            handled += 1
            if handled == stop:
                out({"stopped": handled, "count": d.count})
                time.sleep(60)
    gc.collect()
    before = gc.mem_alloc()
    verified = d.complete() and d.verify(buf)
    verify_alloc = gc.mem_alloc() - before
    out({"resumed": d.resumed, "start": start, "count": d.count, "complete": d.complete(), "verified": verified,
         "results": results, "bad": d.bad, "got": d.got, "missing": [u for u in range(d.units) if not d.has(u)][:20], "bytes": d.bytes_done(),
         "base": base, "alloc_max": alloc_max, "verify_alloc": verify_alloc,
         "heap": gc.mem_alloc() + gc.mem_free(), "want": d.want("s1", 8),
         "progress": otarx.report(offer, "verified" if verified else "downloading", d, rate=1000.5), "us_per_frame": busy // max(handled, 1)})

elif mode == "unpack":
    import otaunpack

    slotboot.slot_boot()
    out({"files": otaunpack.unpack(args[0], bytearray(1024))})

elif mode == "slots":
    # Boots, as the bootloader would see them: select on trial, a boot that never confirms, rollback, confirm.
    import hal.simslot as slots

    def boot():
        slots._running = None
        b = slotboot.slot_boot()
        return [b["slot"], b["trial"], (b["rolled_back"] or {}).get("reason")]

    steps = [["boot", boot()]]
    slots.slot_begin(10)
    slots.slot_write(0, b"new app 1!")
    slotboot.slot_select()
    steps.append(["select", slots.slot_info()["running"]])
    steps.append(["trial boot", boot()])
    steps.append(["unconfirmed boot", boot()])
    slots.slot_begin(10)
    slots.slot_write(0, b"new app 2!")
    slotboot.slot_select()
    steps.append(["trial boot", boot()])
    slotboot.slot_mark_valid()
    steps.append(["confirmed boot", boot()])
    steps.append(["next boot", boot()])
    slots.slot_begin(4)
    slots.slot_write(0, b"bad!")
    slotboot.slot_select()
    steps.append(["trial boot", boot()])
    slotboot.slot_rollback("self-test failed")
    steps.append(["after rollback", boot()])
    buf = bytearray(10)
    slots.slot_read(0, buf, 1)
    steps.append(["slot 1", bytes(buf).decode()])
    try:
        slots.slot_begin(slots.slot_info()["capacity"] + 1)
        steps.append(["too big", "accepted"])
    except OSError as exc:
        steps.append(["too big", str(exc)])
    for step in steps:
        out(step)
