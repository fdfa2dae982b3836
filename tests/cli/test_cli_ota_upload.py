"""``nodefleet ota upload`` against a real simulated node (MicroPython, 110K) on Mosquitto: the tag from the real
ota service (PostgreSQL) over MQTT, the file pushed to the node's local API, the node updated and confirmed; a
refused upload says what to do next and leaves the node as it was."""

from __future__ import annotations

import struct

from nodefleet.contracts.ota import device_key
from nodefleet.ota_release import UPLOAD_MAGIC, encode_upload, write
from tests.node.conftest import watching
from tests.node.test_ota_receiver import NODE, make, online, release
from tests.ota.conftest import MASTER, fleet, operator, running, settings_for
from tests.ota.test_service import upload

from .helpers import cli_env, nodefleet


def _node(tmp_path, mosquitto, topics):
    # The key the ota service derives for this node from its master key: the one provisioning would hand out.
    return make(tmp_path, mosquitto.url, topics, ota_key=device_key(MASTER, NODE).hex(), ota_lan_read_s=2)


async def test_upload_a_release_through_the_ota_service(tmp_path, mosquitto, database, topics):
    rel = release()
    nfr = tmp_path / "nodefleet-1.4.0.nfr"
    write(rel, nfr)
    node = _node(tmp_path, mosquitto, topics)
    env = cli_env(topics, NODEFLEET_MQTT_URL=mosquitto.url)
    async with running(settings_for(mosquitto.url, database, topics)), operator(mosquitto.url, topics) as op, \
            fleet(mosquitto.url, topics, [NODE], peers=[]), watching(mosquitto, topics, NODE) as watch:
        await upload(op, rel)
        await node.start()
        try:
            await online(node, watch)
            nfu = tmp_path / "node-1.nfu"
            done = await nodefleet("ota", "upload", str(nfr), "--node", NODE, "--save", str(nfu), "--device-url",
                                   f"http://127.0.0.1:{node.http_port}", env=env, timeout=90)
            assert done.code == 0, done.stdout + done.stderr
            assert "updated: the node runs 1.4.0 (was 0.1.0)" in done.stdout, done.stdout
            assert nfu.read_bytes()[:4] == UPLOAD_MAGIC
            assert node.read("slots.json")["active"] == 1
            # A node the provisioner does not know gets no tag: the service says so, nothing is sent.
            other = await nodefleet("ota", "upload", str(nfr), "--node", "nobody", "--save", str(tmp_path / "x.nfu"),
                                    env=env)
            assert other.code != 0 and "unknown node(s) nobody" in other.stderr, other.stderr
            assert not (tmp_path / "x.nfu").exists()
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()


async def test_refused_upload_says_what_to_do(tmp_path, mosquitto, topics):
    rel = release()
    body = bytearray(encode_upload(rel, rel.manifest.offer(node=NODE, key=device_key(MASTER, NODE), stream="lan")))
    (n,) = struct.unpack_from(">I", body, 4)
    body[8 + n + len(rel.manifest.blocks) * 32 + 100] ^= 1  # a byte of block 0
    nfu = tmp_path / "damaged.nfu"
    nfu.write_bytes(bytes(body))
    node = _node(tmp_path, mosquitto, topics)
    async with watching(mosquitto, topics, NODE) as watch:
        await node.start()
        try:
            await online(node, watch)
            done = await nodefleet("ota", "upload", str(nfu), "--device-url", f"http://127.0.0.1:{node.http_port}",
                                   env=cli_env(topics), timeout=60)
            assert done.code != 0, done.stdout
            assert "refused the upload (bad_block): block 0 does not match its sha256" in done.stderr, done.stderr
            assert "next: the file is damaged" in done.stderr, done.stderr
            assert node.read("slots.json") is None or node.read("slots.json")["active"] == 0
        finally:
            await node.stop()
        assert "Traceback" not in node.output(), node.output()
