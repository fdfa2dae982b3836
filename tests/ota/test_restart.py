"""The ota service killed with SIGKILL mid-rollout: started again, it reads the rollout back and finishes it."""

from __future__ import annotations

import asyncio
import signal
import uuid

from conftest import wait_for
from nodefleet.wire import BrokerAddress, Client

from .conftest import answers, fleet, operator, release_file, service_process, stop_process
from .test_service import b64, rollout_state

async def test_killed_mid_rollout_and_started_again_it_carries_on(mosquitto, database, topics, release_140, tmp_path):
    names = [f"k{i}" for i in range(6)]
    log = tmp_path / "ota.log"
    service = await service_process(mosquitto.url, topics, database, log)
    try:
        async with operator(mosquitto.url, topics) as op, fleet(mosquitto.url, topics, names, delay=0.1) as peers:
            await wait_for(lambda: answers(op), timeout=20)
            await op("release", {"file": b64(release_file(release_140))})
            await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "rk"})
            # Half way through the downloads: kill -9.
            units = len(release_140.manifest.blocks)
            await wait_for(lambda: any(p.download and len(p.download.blocks) > units // 3 for p in peers.values()),
                           timeout=30)
            service.send_signal(signal.SIGKILL)
            await asyncio.wait_for(service.wait(), 10)
            assert not any(p.state == "updated" for p in peers.values())
            halfway = {n: len(p.download.blocks) for n, p in peers.items() if p.download}
            await asyncio.sleep(1.0)

            service = await service_process(mosquitto.url, topics, database, log)
            await wait_for(lambda: answers(op), timeout=20)
            view = await rollout_state(op, "rk", "done", "halted", timeout=60)
            assert view["state"] == "done" and view["counts"] == {"updated": 6}, view
            assert all(p.image == release_140.image for p in peers.values())
            # Each peer kept its session's blocks: nobody started over (the service's stream rebuilt from wants).
            assert all(peers[n].offers == 1 for n in names)
            assert sum(halfway.values()) > 0
            history = [e["state"] for e in reversed(await op("history", {"node": "k0"}))]
            assert history == ["queued", "downloading", "downloaded", "verified", "updating", "updated"]
    finally:
        await stop_process(service)


async def test_two_instances_one_active_the_standby_takes_over_a_kill_9(mosquitto, database, topics, release_140,
                                                                         tmp_path):
    """Two ota instances: one answers and streams; SIGKILL it mid-rollout and the other finishes the rollout."""
    names = [f"f{i}" for i in range(4)]
    logs = {name: tmp_path / f"{name}.log" for name in ("ota-a", "ota-b")}
    services = {"ota-a": await service_process(mosquitto.url, topics, database, logs["ota-a"], "ota-a")}
    try:
        async with operator(mosquitto.url, topics) as op, fleet(mosquitto.url, topics, names, delay=0.1) as peers, \
                Client(BrokerAddress.parse(mosquitto.url), client_id=f"tap-{uuid.uuid4().hex[:6]}") as tap:
            await wait_for(lambda: answers(op), timeout=20)
            services["ota-b"] = await service_process(mosquitto.url, topics, database, logs["ota-b"], "ota-b")
            await wait_for(lambda: "ota_standby" in logs["ota-b"].read_text(), timeout=20)

            # Every request is answered once: count the answers on the operator's reply topic.
            await tap.subscribe(op.requester.reply_topic, qos=1)
            replies = _Counter(tap)
            counting = asyncio.create_task(replies.run())
            for _ in range(5):
                await op("releases")
            await op("release", {"file": b64(release_file(release_140))})
            await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "rf"})
            await asyncio.sleep(0.5)
            assert replies.count == 7, f"{replies.count} answers to 7 requests"
            counting.cancel()

            units = len(release_140.manifest.blocks)
            await wait_for(lambda: any(p.download and len(p.download.blocks) > units // 3 for p in peers.values()),
                           timeout=30)
            services["ota-a"].send_signal(signal.SIGKILL)
            await asyncio.wait_for(services["ota-a"].wait(), 10)
            killed = asyncio.get_running_loop().time()
            await wait_for(lambda: answers(op), timeout=20)
            took_over = asyncio.get_running_loop().time() - killed
            view = await rollout_state(op, "rf", "done", "halted", timeout=60)
            assert view["state"] == "done" and view["counts"] == {"updated": 4}, view
            assert all(p.image == release_140.image for p in peers.values())
            assert all(peers[n].offers == 1 for n in names)
            assert "ota_active" in logs["ota-b"].read_text()
            print(f"standby answering {took_over:.2f} s after the kill")
            assert took_over < 10
    finally:
        for process in services.values():
            await stop_process(process)


class _Counter:
    def __init__(self, client: Client) -> None:
        self.client, self.count = client, 0

    async def run(self) -> None:
        async for _ in self.client.messages:
            self.count += 1
