"""The packet codec of our own clients: MQTT 3.1.1 bytes, and a stream split anywhere."""

from __future__ import annotations

from nodefleet.wire import packets


def test_packets_follow_mqtt_311():
    # CONNECT: "MQTT", level 4, clean session + user name + password, keepalive 30.
    assert packets.connect("c", clean_session=True, keepalive=30, username="u", password="p") == \
        b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x1e\x00\x01c\x00\x01u\x00\x01p"
    assert packets.publish(b"a/b", b"hi", 1, 258) == b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert packets.publish(b"a/b", b"hi", 0) == b"\x30\x07\x00\x03a/bhi"
    # A remaining length over 127 takes two bytes.
    assert packets.publish(b"t", b"x" * 200, 0)[:3] == b"\x30\xcb\x01"


def test_packet_reader_handles_any_split():
    stream = b"".join([
        bytes((packets.PUBLISH | 0x02,)) + bytes((2 + 5 + 2 + 3,)) + b"\x00\x05a/b/c\x00\x07abc",
        bytes((packets.PUBLISH,)) + b"\x82\x01" + b"\x00\x01t" + b"x" * 127,  # two-byte remaining length (130)
        packets.PINGREQ_PACKET,
    ])
    for cut in range(1, len(stream)):
        reader = packets.PacketReader()
        got = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        assert [first & 0xF0 for first, _ in got] == [packets.PUBLISH, packets.PUBLISH, packets.PINGREQ]
        assert packets.parse_publish(*got[0]) == ("a/b/c", b"abc", 1, 7)
        assert packets.parse_publish(*got[1]) == ("t", b"x" * 127, 0, 0)
