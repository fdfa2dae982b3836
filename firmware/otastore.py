# One OTA download on flash: block table, image in the inactive slot, and a bitmap that survives a power cut.
import gc
import hashlib

import os
import struct
from binascii import a2b_base64, b2a_base64, unhexlify

from hal import slots
import store

# The frame format of ota.py, repeated here so that ota.py (the offer check) can go once an offer is accepted.
HEADER = ">2sBBI8sI"
HEADER_SIZE = 20
KIND_TABLE = 1
KIND_BLOCK = 2
DIGEST = 32

PROGRESS = "ota.json"
TABLE = "ota_table.bin"
SAVE_EVERY = 8  # units written between bitmap saves: a resume fetches at most this many again


def _size(name):
    try:
        return os.stat(name)[6]
    except OSError:
        return -1


def equal(a, b):
    # Constant time for equal lengths (as ota.equal).
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


def header(buf):
    # (kind, index, release id, data length) of a frame, or ValueError (as ota.header).
    if len(buf) < HEADER_SIZE:
        raise ValueError("short frame")
    magic, version, kind, index, rid, n = struct.unpack_from(HEADER, buf)
    if magic != b"NF" or version != 1 or kind not in (KIND_TABLE, KIND_BLOCK):
        raise ValueError("not an OTA frame")
    if n != len(buf) - HEADER_SIZE:
        raise ValueError("frame length %d, carries %d" % (n, len(buf) - HEADER_SIZE))
    return kind, index, bytes(rid), n


def _ones(buf):
    n = 0
    for b in buf:
        while b:
            b &= b - 1
            n += 1
    return n


class Download:
    # Frames arrive in any order and any number of times; each is checked before anything is written.

    def __init__(self, offer, save_every=SAVE_EVERY):
        self.offer = offer
        self.release = offer["release"]
        self.bs = offer.get("block_size", 4096)
        self.size = offer["size"]
        self.blocks = offer["blocks"]
        self.tables = [unhexlify(h) for h in offer["table"]]
        self.nt = len(self.tables)
        self.units = self.nt + self.blocks
        self.rid = unhexlify(offer["sha256"])[:8]
        self.save_every = save_every
        self.digest = bytearray(DIGEST)
        self.got = 0
        self.unsaved = 0
        self.slot = slots.slot_info()["next"]
        saved = store.load(PROGRESS) or {}
        try:
            have = a2b_base64(saved.get("have", ""))
        except (TypeError, ValueError):
            have = b""  # a damaged bitmap: start afresh
        self.have = bytearray(have)
        self.resumed = (saved.get("sha256") == offer["sha256"] and saved.get("slot") == self.slot
                        and len(have) == (self.units + 7) // 8 and _size(TABLE) >= self._table_end())
        if self.resumed:
            self.bad = saved.get("bad", 0)
        else:
            # A new download: the bitmap is saved empty before the first write, so a stale one never resumes.
            self.have = bytearray((self.units + 7) // 8)
            self.bad = 0
            slots.slot_begin(self.size)
            open(TABLE, "wb").close()
            self.save()
        self.count = _ones(self.have)

    # -- bitmap --------------------------------------------------------------
    def has(self, u):
        return self.have[u >> 3] & (0x80 >> (u & 7))

    def _table_end(self):
        # Bytes the table file must hold for the table chunks the bitmap claims.
        end = 0
        for i in range(self.nt):
            if self.has(i):
                end = i * self.bs + min(self.bs, self.blocks * DIGEST - i * self.bs)
        return end

    def complete(self):
        return self.count == self.units

    def bytes_done(self):
        n = 0
        for i in range(self.blocks):
            if self.has(self.nt + i):
                n += min(self.bs, self.size - i * self.bs)
        return n

    def save(self):
        store.save(PROGRESS, {"release": self.release, "sha256": self.offer["sha256"], "slot": self.slot,
                              "have": b2a_base64(bytes(self.have), newline=False).decode(), "bad": self.bad})
        self.unsaved = 0

    def want(self, session, window):
        return {"v": 1, "release": self.release, "session": session, "got": self.got, "window": window,
                "have": b2a_base64(bytes(self.have), newline=False).decode()}

    # -- frames --------------------------------------------------------------
    def handle(self, frame):
        # "ok" written, "dup" already had it, "early" block before its table chunk, "foreign", "bad" refused.
        self.got += 1
        try:
            kind, index, rid, n = header(frame)
        except ValueError:
            self.bad += 1
            return "bad"
        if rid != self.rid:
            return "foreign"  # another release's frame (e.g. an older repair still in flight)
        data = memoryview(frame)[HEADER_SIZE:]
        bs = self.bs
        if kind == KIND_TABLE:
            u = index
            ok = index < self.nt and n == min(bs, self.blocks * DIGEST - index * bs)
        else:
            u = self.nt + index
            ok = index < self.blocks and n == min(bs, self.size - index * bs)
        if not ok:
            self.bad += 1
            return "bad"
        if self.has(u):
            return "dup"
        if kind == KIND_TABLE:
            if not equal(hashlib.sha256(data).digest(), self.tables[index]):
                self.bad += 1
                return "bad"
            with open(TABLE, "r+b") as f:
                f.seek(index * bs)
                f.write(data)
        else:
            if not self.has(index * DIGEST // bs):
                return "early"
            with open(TABLE, "rb") as f:
                f.seek(index * DIGEST)
                f.readinto(self.digest)
            if not equal(hashlib.sha256(data).digest(), self.digest):
                self.bad += 1
                return "bad"
            slots.slot_write(index * bs, data)
        # Written first, marked after: a saved bitmap never claims a block that is not on flash.
        self.have[u >> 3] |= 0x80 >> (u & 7)
        self.count += 1
        self.unsaved += 1
        if self.unsaved >= self.save_every or self.complete():
            self.save()
        return "ok"

    # -- the whole image -----------------------------------------------------
    def verify(self, buf=None):
        # Read the slot back and hash the whole image: what will boot, not what arrived.
        buf = buf or bytearray(self.bs)
        mv = memoryview(buf)
        h = hashlib.sha256()
        off = 0
        chunk = 0
        while off < self.size:
            n = min(len(buf), self.size - off)
            slots.slot_read(off, mv[:n])
            h.update(mv[:n])
            off += n
            chunk += 1
            if not chunk % 16:
                gc.collect()  # a slot read may leave garbage (the sim opens its file): keep it from piling up
        return equal(h.digest(), unhexlify(self.offer["sha256"]))

    def clear(self):
        store.remove(PROGRESS)
        store.remove(TABLE)

