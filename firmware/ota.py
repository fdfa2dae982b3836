# OTA checks without I/O: the offer's HMAC-SHA256 tag, frame headers, version order (docs/ota.md).
import hashlib
import struct
from binascii import unhexlify

HEADER = ">2sBBI8sI"  # magic NF, version 1, kind, index, release id, data length
HEADER_SIZE = 20
KIND_TABLE = 1
KIND_BLOCK = 2
DIGEST = 32


def hmac_sha256(key, msg):
    # RFC 2104 over hashlib.sha256: MicroPython has no hmac module.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    pad = bytearray(64)
    pad[:len(key)] = key
    for i in range(64):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    for i in range(64):
        pad[i] ^= 0x6A  # 0x36 ^ 0x5C: the inner pad becomes the outer one
    outer = hashlib.sha256(pad)
    outer.update(inner.digest())
    return outer.digest()


def equal(a, b):
    # Constant time for equal lengths: the time says nothing about where a forged tag differs.
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


def auth_message(node, offer):
    # The same bytes as nodefleet.contracts.ota.auth_message.
    fields = (node, offer["release"], offer.get("format", "nfi1"), str(offer["size"]), offer["sha256"],
              str(offer.get("block_size", 4096)), str(offer["blocks"]), ",".join(offer["table"]),
              "1" if offer.get("force") else "0")
    return ("nodefleet-ota/1\n" + "\n".join(fields)).encode()


def version_key(text):
    # "1.4.0" < "1.10.0"; a pre-release ("1.5.0-rc.1") sorts before its release.
    main, _, pre = text.partition("-")
    return tuple(int(p) for p in main.split(".")) + ((0, pre) if pre else (1, ""))


def check_offer(offer, node, key, running, slot_format, capacity):
    # None if this node may download the offer, else why not: (code, reason).
    try:
        size, bs, blocks, table = int(offer["size"]), int(offer.get("block_size", 4096)), int(offer["blocks"]), offer["table"]
        tag = unhexlify(offer["tag"])
        if not 0 < size <= capacity:
            return "no_space", "image of %d bytes, slot holds %d" % (size, capacity)
        if bs % 1024 or not 1024 <= bs <= 16384 or blocks != (size + bs - 1) // bs:
            return "bad_offer", "block size %d and %d blocks do not fit %d bytes" % (bs, blocks, size)
        if len(table) != (blocks * DIGEST + bs - 1) // bs:
            return "bad_offer", "table lists %d digests" % len(table)
        newer = version_key(offer["release"]) > version_key(running)
        msg = auth_message(node, offer)
    except (KeyError, TypeError, ValueError) as exc:
        return "bad_offer", "malformed offer: %r" % exc
    if not equal(hmac_sha256(key, msg), tag):
        return "bad_tag", "offer tag does not verify with this node's key"
    if offer.get("format", "nfi1") != slot_format:
        return "bad_format", "image format %s, this node installs %s" % (offer.get("format"), slot_format)
    if not newer and not offer.get("force"):
        return "not_newer", "release %s is not newer than %s" % (offer["release"], running)
    return None


def header(buf):
    # (kind, index, release id, data length) of a frame, or ValueError.
    if len(buf) < HEADER_SIZE:
        raise ValueError("short frame")
    magic, version, kind, index, rid, n = struct.unpack_from(HEADER, buf)
    if magic != b"NF" or version != 1 or kind not in (KIND_TABLE, KIND_BLOCK):
        raise ValueError("not an OTA frame")
    if n != len(buf) - HEADER_SIZE:
        raise ValueError("frame length %d, carries %d" % (n, len(buf) - HEADER_SIZE))
    return kind, index, bytes(rid), n
