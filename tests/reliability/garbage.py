"""Raw garbage payloads for every subscribed topic: bytes, not models, as a broken or hostile client sends them."""

from __future__ import annotations

import random


def payloads(limit: int) -> list[tuple[str, bytes]]:
    """(name, payload) pairs; ``limit`` is the receiver's size limit, tried at, just past and far past it."""
    noise = random.Random(15)  # the same bytes every run
    return [
        ("random bytes", bytes(noise.randrange(256) for _ in range(200))),
        ("invalid UTF-8", b'{"v": 1, "x": "\xff\xfe\xc3\x28"}'),
        ("empty", b""),
        ("null", b"null"),
        ("a list", b"[1, 2, 3]"),
        ("a string", b'"ON"'),
        ("wrong shape", b'{"v": "one", "version": [], "rules": {"a": 1}, "state": 7}'),
        ("unknown fields", b'{"v": 1, "version": 2, "zzz": 1, "__class__": "x", "constructor": {}}'),
        ("deep nesting", b"[" * 1500),
        ("deep objects", b'{"a":' * 600 + b"1" + b"}" * 600),
        ("huge integer", b'{"v": 1, "version": 1' + b"0" * 400 + b"}"),
        ("huge float", b'{"v": 1e999, "version": -1e999}'),
        ("NUL bytes", b"\x00" * 64),
        ("at the limit", b"[" + b" " * (limit - 2) + b"]"),
        ("past the limit", b"{" + b" " * (limit - 1) + b"}"),
        ("far past the limit", b"x" * (limit * 8)),
    ]
