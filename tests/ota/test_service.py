"""The ota service on a real broker (Mosquitto and amqtt) and PostgreSQL, with test peers as the nodes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid

import pytest

from conftest import wait_for
from nodefleet.contracts.topics import OtaTopic
from nodefleet.errors import RequestError
from nodefleet.wire import BrokerAddress, Client
from services.ota.rollout import Policy, plan

from .conftest import fleet, operator, release_file, running, settings_for


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def upload(op, release) -> dict:
    return await op("release", {"file": b64(release_file(release))})


async def test_release_upload_good_damaged_duplicate(broker, database, topics, release_140):
    async with running(settings_for(broker.url, database, topics)) as service, operator(broker.url, topics) as op:
        info = await upload(op, release_140)
        assert info["version"] == "1.4.0" and info["sha256"] == release_140.manifest.sha256
        assert info["blocks"] == len(release_140.manifest.blocks)
        damaged = bytearray(release_file(release_140))
        damaged[-100] ^= 0xFF
        with pytest.raises(RequestError, match="does not match its sha256"):
            await op("release", {"file": b64(bytes(damaged))})
        with pytest.raises(RequestError, match="not a nodefleet release file"):
            await op("release", {"file": b64(b"hello")})
        with pytest.raises(RequestError, match="not valid base64"):
            await op("release", {"file": "!!!"})
        with pytest.raises(RequestError, match="already kept, with this very image"):
            await upload(op, release_140)
        assert [r["version"] for r in await op("releases")] == ["1.4.0"]
        assert service.errors.counts["bad_request"] == 4


class Tap:
    """Counts the frame bytes the service publishes: on the shared stream and on the nodes' repair topics."""

    def __init__(self, url: str, topics) -> None:
        self.url, self.topics = url, topics
        self.shared = self.repair = self.shared_frames = self.repair_frames = 0

    async def run(self) -> None:
        async with Client(BrokerAddress.parse(self.url), client_id=f"tap-{uuid.uuid4().hex[:6]}") as client:
            await client.subscribe(self.topics.ota_streams(), qos=0)
            await client.subscribe(f"{self.topics.root}/+/ota/data", qos=0)  # noqa: topic-literal (test)
            async for message in client.messages:
                if message.topic.startswith(self.topics.fleet):
                    self.shared += len(message.payload)
                    self.shared_frames += 1
                else:
                    self.repair += len(message.payload)
                    self.repair_frames += 1


@contextlib.asynccontextmanager
async def tapped(url, topics):
    tap = Tap(url, topics)
    task = asyncio.create_task(tap.run())
    await asyncio.sleep(0.2)
    try:
        yield tap
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def rollout_state(op, rollout_id, *states, timeout=60.0):
    async def check():
        [view] = await op("status", {"id": rollout_id})
        return view if view["state"] in states else None
    return await wait_for(check, timeout=timeout, interval=0.2)


async def test_twenty_peers_share_one_stream(broker, database, topics, release_140):
    names = [f"n{i:02d}" for i in range(20)]
    size = release_140.manifest.size
    async with running(settings_for(broker.url, database, topics)) as service, operator(broker.url, topics) as op, \
            fleet(broker.url, topics, names) as peers, tapped(broker.url, topics) as tap:
        await upload(op, release_140)
        started = asyncio.get_running_loop().time()
        view = await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 1, "stages": "100%",
                                           "id": "r20"})
        assert view["state"] == "running" and len(view["targets"]) == 20 and len(view["stages"]) == 2
        done = await rollout_state(op, "r20", "done", "halted", timeout=90)
        took = asyncio.get_running_loop().time() - started
        assert done["state"] == "done", done["reason"]
        assert done["counts"] == {"updated": 20} and done["percent"] == 100.0
        assert all(p.image == release_140.image for p in peers.values())
        await asyncio.sleep(0.3)
        published = tap.shared + tap.repair
        per_node = published / 20
        print(json.dumps({"broker": type(broker).__name__, "image": size, "shared_bytes": tap.shared,
                          "repair_bytes": tap.repair, "per_node": round(per_node), "ratio": round(per_node / size, 3),
                          "frames": tap.shared_frames + tap.repair_frames, "seconds": round(took, 2),
                          "frames_per_s": round((tap.shared_frames + tap.repair_frames) / took)}))
        # The canary alone (its own repairs), then the other 19 on the shared stream: about two images in all.
        assert published < 3.5 * size and per_node < 0.2 * size
        assert tap.shared > size  # the 19 got the image from the shared stream, about once
        assert service.pump.stats.shared_frames == tap.shared_frames


async def test_progress_lands_in_history(broker, database, topics, release_140):
    async with running(settings_for(broker.url, database, topics)), operator(broker.url, topics) as op, \
            fleet(broker.url, topics, ["solo"]):
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "nodes": ["solo"], "canary": 0, "id": "rs"})
        await rollout_state(op, "rs", "done")
        states = [e["state"] for e in reversed(await op("history", {"node": "solo"}))]
        assert states == ["queued", "downloading", "downloaded", "verified", "updating", "updated"]
        assert (await op("status"))  == []  # nothing open


async def test_canary_failure_halts(mosquitto, database, topics, release_140):
    names = ["a1", "a2", "a3", "a4", "a5"]
    canary = plan("rc", names, Policy(canary=1))[0][0]
    async with running(settings_for(mosquitto.url, database, topics)), operator(mosquitto.url, topics) as op, \
            fleet(mosquitto.url, topics, names, per_node={canary: {"outcome": "rolled_back"}}) as peers:
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 1, "stages": "50%,100%", "id": "rc"})
        view = await rollout_state(op, "rc", "halted", "done")
        assert view["state"] == "halted" and f"the canary {canary} rolled back" in view["reason"]
        await asyncio.sleep(0.5)
        assert [p.offers for n, p in sorted(peers.items()) if n != canary] == [0, 0, 0, 0]  # nobody else offered
        assert {t["node"]: t["state"] for t in view["targets"]}[canary] == "rolled_back"


async def test_failure_share_over_min_sample_halts(mosquitto, database, topics, release_140):
    names = [f"f{i}" for i in range(8)]
    failing = {n: {"outcome": "failed"} for n in names[:3]}
    slow = {n: {"delay": 0.05} for n in names[3:]}
    async with running(settings_for(mosquitto.url, database, topics)), operator(mosquitto.url, topics) as op, \
            fleet(mosquitto.url, topics, names, per_node={**failing, **slow}):
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "stages": "100%",
                                   "max_failures": 0.2, "min_sample": 3, "id": "rf"})
        view = await rollout_state(op, "rf", "halted", "done")
        assert view["state"] == "halted" and "over the 20% allowed" in view["reason"]
        assert view["counts"].get("failed") == 3
        # Halted while the slow ones were still downloading: their offers were withdrawn.
        assert any(not t["offered"] for t in view["targets"] if t["node"] in names[3:])


async def retained_offers(url, topics, names) -> dict[str, dict]:
    found: dict[str, dict] = {}
    async with Client(BrokerAddress.parse(url), client_id=f"ret-{uuid.uuid4().hex[:6]}") as client:
        for name in names:
            await client.subscribe(topics.node_ota_inbox(name)[0], qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.7):
                async for message in client.messages:
                    if message.payload and message.retain:
                        found[message.topic.split("/")[-3]] = json.loads(message.payload)
    return found


async def test_pause_resume_abort_withdraw_and_republish_offers(broker, database, topics, release_140):
    names = ["p1", "p2", "p3", "p4"]
    async with running(settings_for(broker.url, database, topics)), operator(broker.url, topics) as op, \
            fleet(broker.url, topics, names, peers=["p1", "p2"], delay=0.1) as peers:
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "rp"})
        assert set(await retained_offers(broker.url, topics, names)) == set(names)
        await wait_for(lambda: all(p.state == "downloading" for p in peers.values()), timeout=10)
        await asyncio.sleep(0.5)  # their progress is in

        paused = await op("rollout_pause", {"id": "rp"})
        assert paused["state"] == "paused"
        # The offline ones (still queued) lost their offer; the two downloading go on.
        assert set(await retained_offers(broker.url, topics, names)) == {"p1", "p2"}
        with pytest.raises(RequestError, match="only a running rollout can be paused"):
            await op("rollout_pause", {"id": "rp"})

        resumed = await op("rollout_resume", {"id": "rp"})
        assert resumed["state"] == "running"
        assert set(await retained_offers(broker.url, topics, names)) == set(names)

        aborted = await op("rollout_abort", {"id": "rp"})
        assert aborted["state"] == "aborted"
        assert await retained_offers(broker.url, topics, names) == {}
        await wait_for(lambda: all(p.withdrawn for p in peers.values()), timeout=5)
        assert await op("status") == []
        with pytest.raises(RequestError, match="already aborted"):
            await op("rollout_abort", {"id": "rp"})


async def test_max_downloads_keeps_the_others_queued(mosquitto, database, topics, release_140):
    names = [f"q{i}" for i in range(5)]
    settings = settings_for(mosquitto.url, database, topics, max_downloads=2)
    async with running(settings), operator(mosquitto.url, topics) as op, \
            fleet(mosquitto.url, topics, names, delay=0.02):
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "rq"})
        most, waited = 0, 0
        while True:
            [view] = await op("status", {"id": "rq"})
            most = max(most, len(view["downloading"]))
            waited = max(waited, len(view["waiting"]))
            if view["state"] != "running":
                break
            await asyncio.sleep(0.1)
        assert view["state"] == "done" and view["counts"] == {"updated": 5}
        assert most == 2 and waited >= 2


async def test_bad_input_is_rejected_counted_and_the_service_goes_on(broker, database, topics, release_140):
    async with running(settings_for(broker.url, database, topics)) as service, operator(broker.url, topics) as op, \
            fleet(broker.url, topics, ["g1"], peers=[]):
        errors: list[dict] = []

        async def listen():
            async with Client(BrokerAddress.parse(broker.url), client_id=f"err-{uuid.uuid4().hex[:6]}") as c:
                await c.subscribe(topics.errors(), qos=0)
                async for message in c.messages:
                    errors.append(json.loads(message.payload))

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        await upload(op, release_140)
        await op("rollout_start", {"release": "1.4.0", "nodes": ["g1"], "canary": 0, "id": "rb"})
        client = op.client
        await client.publish(topics.ota("g1", OtaTopic.WANT), b"{not json", qos=0)
        await client.publish(topics.ota("g1", OtaTopic.PROGRESS), json.dumps({"release": "1.4.0", "state": "failed"}),
                             qos=1)
        good_want = {"release": "1.4.0", "session": "s1", "got": 0, "window": 8, "have": ""}
        await client.publish(topics.ota("ghost", OtaTopic.WANT), json.dumps(good_want), qos=0)
        await client.publish(topics.ota("ghost", OtaTopic.PROGRESS),
                             json.dumps({"release": "1.4.0", "state": "downloading"}), qos=1)
        await client.publish(topics.ota("g1", OtaTopic.WANT), json.dumps(good_want), qos=0)  # bitmap too short
        await client.publish(topics.ota("g1", OtaTopic.WANT), json.dumps({**good_want, "release": "9.9.9"}), qos=0)
        expected = {"bad_want": 1, "bad_progress": 1, "rejected_want": 3, "rejected_progress": 1}
        await wait_for(lambda: all(service.errors.counts.get(k, 0) >= v for k, v in expected.items()), timeout=5)
        assert {k: service.errors.counts[k] for k in expected} == expected
        await wait_for(lambda: {e["code"] for e in errors} >= set(expected), timeout=5)
        assert any(e.get("node") == "ghost" and "not a target" in e["detail"] for e in errors)
        [view] = await op("status", {"id": "rb"})  # still answering
        assert view["state"] == "running"
        listener.cancel()


async def test_clear_errors_for_unknown_release_node_and_no_key(broker, database, topics, release_140):
    async with running(settings_for(broker.url, database, topics)), operator(broker.url, topics) as op, \
            fleet(broker.url, topics, ["k1"], peers=[]):
        with pytest.raises(RequestError, match="no release 9.9.9 is kept.*nodefleet ota release FILE"):
            await op("rollout_start", {"release": "9.9.9", "all": True})
        await upload(op, release_140)
        with pytest.raises(RequestError, match="unknown node.*nope.*nodefleet devices"):
            await op("rollout_start", {"release": "1.4.0", "nodes": ["k1", "nope"]})
        with pytest.raises(RequestError, match="no provisioned node in home elsewhere"):
            await op("rollout_start", {"release": "1.4.0", "home": "elsewhere"})
        with pytest.raises(RequestError, match="name the targets one way"):
            await op("rollout_start", {"release": "1.4.0", "all": True, "nodes": ["k1"]})
        with pytest.raises(RequestError, match="stages must rise"):
            await op("rollout_start", {"release": "1.4.0", "all": True, "stages": "50%,10%,100%"})
        with pytest.raises(RequestError, match="no rollout zzz"):
            await op("status", {"id": "zzz"})
    async with running(settings_for(broker.url, database, topics, ota_master_key=None)), \
            operator(broker.url, topics) as op, fleet(broker.url, topics, ["k1"], peers=[]):
        with pytest.raises(RequestError, match="no OTA master key.*NODEFLEET_OTA_MASTER_KEY"):
            await op("rollout_start", {"release": "1.4.0", "all": True})


async def test_targets_by_home(mosquitto, database, topics, release_140):
    async with running(settings_for(mosquitto.url, database, topics)), operator(mosquitto.url, topics) as op, \
            fleet(mosquitto.url, topics, ["h1", "h2", "h3"], homes={"h3": "cabin"}, peers=[]):
        await upload(op, release_140)
        view = await op("rollout_start", {"release": "1.4.0", "home": "home1", "canary": 0, "id": "rh"})
        assert sorted(t["node"] for t in view["targets"]) == ["h1", "h2"]
        with pytest.raises(RequestError, match="already in rollout rh"):
            await op("rollout_start", {"release": "1.4.0", "nodes": ["h2"]})


async def test_an_offer_left_standing_after_its_rollout_goes_at_the_nodes_updated(broker, database, topics):
    """A stop between a rollout's last write and a withdrawal leaves an offer no open rollout has; the node says
    ``updated`` at every connect while it stands (firmware/normal.py): the service withdraws it, no error."""
    async with running(settings_for(broker.url, database, topics)) as service, \
            Client(BrokerAddress.parse(broker.url), client_id=f"left-{uuid.uuid4().hex[:6]}") as client:
        offer_topic = topics.ota("left1", OtaTopic.OFFER)
        await client.publish(offer_topic, b'{"release": "1.4.0"}', qos=1, retain=True)
        await client.subscribe(offer_topic, qos=1)
        seen: list[bytes] = []

        async def collect() -> None:
            async for message in client.messages:
                seen.append(message.payload)

        collecting = asyncio.create_task(collect())
        try:
            await wait_for(lambda: seen == [b'{"release": "1.4.0"}'], timeout=5)
            await client.publish(topics.ota("left1", OtaTopic.PROGRESS),
                                 json.dumps({"release": "1.4.0", "state": "updated"}), qos=1)
            await wait_for(lambda: seen[-1:] == [b""], timeout=10)
        finally:
            collecting.cancel()
        assert "rejected_progress" not in service.errors.counts
