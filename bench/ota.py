"""OTA download benchmark: ``python -m bench.ota [--quick] [--flash-kbps 100]``.

A release of about 1 MiB (today's firmware plus a filler module) goes to one
node and to 20 nodes, the real firmware on the real MicroPython interpreter
(``nodefleet.sim``, heap ``nodefleet.sim.HEAP``), with a 20 ms round trip
between the broker and the nodes (``bench.delay_proxy``: the nodes connect to
it; the services and the benchmark's tap connect to Mosquitto directly).

The real services run as processes, as deployed: Mosquitto, an embedded
PostgreSQL, ``python -m services.provisioner`` (credentials none, an OTA
master key, so nodes get their keys) and ``python -m services.ota``.  The
nodes are registered through the provisioner (``sim_registration``), come
online through the proxy, and the rollout is driven with the operator's
requests (``release``, ``rollout_start``: canary 0, one stage).

Times run from sending ``rollout_start`` to the node's ``verified`` progress
(download and whole-image check) and to ``updated`` (reboot into the new
slot, self-test), as the tap sees them on the broker.  Baseline in the same
run and harness: stop-and-wait, the node's window set to 1 (``ota_window`` in
its mqtt.json), one 4 KiB frame per round trip as ThingsBoard and AWS IoT do
by default.  The firmware's window, 16 and 32 are measured one after the
other the same way.  Published bytes are counted by the tap on
``fleet/ota/data/+`` and ``home/+/ota/data`` (the broker's view, not the
service's claim).  Resume: one node is SIGKILLed once half the units have
been published to it, started again, and the units published to it again are
counted.  ``peak_heap_kb``: the least ``heap_min`` (free heap after a
collection, low-water since boot) any node reported in its download mode;
``trial_heap_kb`` the same in the trial boot that follows (normal mode of
the new firmware with the trial and self-test).

The last line printed is JSON (see bench/README.md); the line before it holds
the per-window and per-phase details and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodefleet import wire
from nodefleet.contracts import Topics
from nodefleet.contracts.ota import OTA_SERVICE
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE, ListRequest
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres
from nodefleet.ota_release import Release, encode
from nodefleet.paths import mqtt_url
from nodefleet.sim import HEAP, SimNode
from nodefleet.sim_registration import register_nodes

from .ota_harness import (
    ROOT,
    CpuMeter,
    ProxyProcess,
    ServiceProcess,
    Tap,
    _say,
    big_release,
    firmware_window,
    new_client_id,
)

RTT = 0.020
IMAGE = 1024 * 1024
VERSION = "9.9.0"
SAVE_EVERY = 8  # units between bitmap saves on the node (firmware/otastore.py SAVE_EVERY)
STOP_AND_WAIT = 1
FLEET = 20
CASE_TIMEOUT = 150.0
UPDATE_WAIT = 20.0  # seconds after the last verified for every node's updated


@dataclass
class Case:
    label: str
    nodes: int
    window: int
    flash_bps: int = 0
    kill: bool = False


class Bench:
    def __init__(self, *, work: Path, heap: str, release: Release, tap: Tap, broker_url: str, proxy_port: int,
                 topics: Topics, pids: dict[str, int]) -> None:
        self.pids = pids
        self.work, self.heap, self.release, self.tap = work, heap, release, tap
        self.broker_url, self.proxy_port, self.topics = broker_url, proxy_port, topics
        self.units = release.units()
        self.install_failures: list[dict[str, Any]] = []

    async def nodes_for(self, case: Case) -> list[SimNode]:
        """Fresh nodes registered through the provisioner, each with its login, key and the case's window."""
        regs = await register_nodes(count=case.nodes, mqtt_url=self.broker_url, topics=self.topics, store=None,
                                    scope="bench", name_prefix=case.label, keyed=True)
        out = []
        env = {"NF_FLASH_BPS": str(case.flash_bps)} if case.flash_bps else None
        for reg in regs:
            cfg = reg.mqtt_config
            if cfg.broker_port != self.proxy_port or not cfg.ota_key:
                raise RuntimeError(f"registration of {cfg.node_name} gives {cfg.broker_host}:{cfg.broker_port}, "
                                   f"key {bool(cfg.ota_key)}: expected the proxy's port and a key")
            node = SimNode(self.work / case.label / cfg.node_name, name=cfg.node_name, heap=self.heap, control=False,
                           http=False, env=env)
            node.provision(broker=mqtt_url(cfg.username, cfg.password, cfg.broker_host, cfg.broker_port),
                           topic_prefix=cfg.topic_prefix, keepalive=10, max_backoff=1, telemetry_max=1,
                           ota_key=cfg.ota_key)
            node.write("mqtt.json", {**node.read("mqtt.json"), "ota_window": case.window})
            out.append(node)
        return out

    async def provisioned(self, names: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.tap.request(PROVISIONER_SERVICE, "list", ListRequest().model_dump(mode="json"))
            done = {r["node"] for r in rows if r["status"] == "provisioned"}
            if set(names) <= done and all(self.tap.status.get(n) == "online" for n in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not online and provisioned within {timeout} s: {sorted(set(names) - done)}")
            await asyncio.sleep(0.2)

    async def run(self, case: Case) -> dict[str, Any]:
        nodes = await self.nodes_for(case)
        names = [n.name for n in nodes]
        by_name = {n.name: n for n in nodes}
        kill: dict[str, Any] = {}
        try:
            for node in nodes:
                await node.start()
            await self.provisioned(names)
            meter = CpuMeter({"nodes": lambda: [n.pid for n in nodes],
                              **{name: (lambda pid=pid: [pid]) for name, pid in self.pids.items()}})
            t0 = time.monotonic()
            if case.kill:
                self._arm_kill(names[0], t0, kill)
            await self.tap.request(OTA_SERVICE, "rollout_start", {
                "release": VERSION, "nodes": names, "canary": 0, "stages": "100%", "id": f"bench-{case.label}"})
            deadline = t0 + CASE_TIMEOUT
            while not all(self.tap.first(n, "verified", t0) for n in names):
                if "at" in kill and "restarted" not in kill:
                    await by_name[names[0]].kill()
                    kill["killed"] = time.monotonic()
                    await asyncio.sleep(0.3)  # the power stays off a moment
                    await by_name[names[0]].start()
                    kill["restarted"] = time.monotonic()
                meter.sample()
                failed = [n for n in names if self.tap.first(n, "failed", t0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"case {case.label}: failed {failed}; progress "
                                       f"{[p['state'] for _, p in self.tap.progress[names[0]]][-8:]}; output "
                                       f"{by_name[(failed or names)[0]].output()[-1500:]}")
                await asyncio.sleep(0.05)
            cpu = meter.totals()  # rollout_start to the last verified
            # Then the install (reboot into the new slot, self-test): reported when it comes, not required.
            settle = min(deadline, time.monotonic() + UPDATE_WAIT)
            while time.monotonic() < settle:
                waiting = [n for n in names if not self.tap.first(n, "updated", t0)]
                if not waiting or any(not by_name[n].running for n in waiting):
                    break  # all updated, or a node's interpreter ended (a crash: see install_failures)
                await asyncio.sleep(0.05)
            missing = [n for n in names if not self.tap.first(n, "updated", t0)]
            if missing:
                first = by_name[missing[0]]
                self.install_failures.append({
                    "case": case.label, "nodes": len(missing), "output": first.output()[-3000:],
                    "states": [p["state"] for t, p in self.tap.progress[first.name] if t >= t0][-4:],
                    "otarx": first.read("otarx.json"), "slots": first.read("slots.json"), "exits": first.exits[-3:]})
            t_end = time.monotonic()
            # The trial boot's heap: wait (at most 2 s) for a telemetry of each updated node's new firmware.
            settle = time.monotonic() + 2.0
            while time.monotonic() < settle and not all(
                    any(t > u and "temperature" in r for t, r in self.tap.telemetry[n])
                    for n in names if (u := self.tap.first(n, "updating", t0))):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            self.tap.on_frame = None
            await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
        result = self.figures(case, names, t0, t_end, kill)
        result["cpu_s"] = cpu
        return result

    def _arm_kill(self, node: str, t0: float, kill: dict[str, Any]) -> None:
        sent: set[int] = set()

        def watch(frame: Any) -> None:
            if frame.t >= t0 and frame.to in (node, None):
                sent.add(frame.unit)
                if len(sent) >= self.units // 2 and "at" not in kill:
                    kill["at"] = frame.t

        self.tap.on_frame = watch

    def figures(self, case: Case, names: list[str], t0: float, t_end: float, kill: dict[str, Any]) -> dict[str, Any]:
        tap = self.tap
        verified = {n: tap.first(n, "verified", t0) - t0 for n in names}
        ups = [tap.first(n, "updated", t0) for n in names]
        frames = tap.frames_between(t0, t_end)
        first_frame = min(f.t for f in frames) - t0
        last_frame = max(f.t for f in frames) - t0
        # Progress waits in the node's bounded queue, newest only: a quick verified may replace its downloaded.
        downloaded = [d - t0 for d in (tap.first(n, "downloaded", t0) for n in names) if d is not None]
        lows = []
        for n in names:
            until = tap.first(n, "updating", t0) or t_end
            # Download mode has no sensors: its telemetry carries no temperature (normal mode's does).
            lows += [r["heap_min"] for t, r in tap.telemetry[n] if t0 <= t <= until and "temperature" not in r
                     and r.get("heap_min")]
        # rollout_start to the first want: the offer, the restart into the download mode and its connect; from
        # there to the first frame: the service's gather and pump.
        wants = [t for n in names for t, _ in tap.wants[n] if t >= t0]
        offers = [t for n in names for t in tap.offers[n] if t >= t0]
        # The trial boot: normal mode of the new firmware (its telemetry has sensors) with the trial on top,
        # from `updating` on; heap_min is a low-water mark since that boot.
        trial = [r["heap_min"] for n in names if (u := tap.first(n, "updating", t0))
                 for t, r in tap.telemetry[n] if t > u and "temperature" in r and r.get("heap_min")]
        shared = sum(f.size for f in frames if f.to is None)
        repair = sum(f.size for f in frames if f.to is not None)
        out = {
            "label": case.label, "nodes": case.nodes, "window": case.window, "flash_bps": case.flash_bps,
            "verified_s": round(max(verified.values()), 3), "updated_s": round(max(ups) - t0, 3) if all(ups) else None,
            "updated_nodes": sum(1 for u in ups if u),
            "first_frame_s": round(first_frame, 3),
            "first_offer_s": round(min(offers) - t0, 3) if offers else None,
            "first_want_s": round(min(wants) - t0, 3) if wants else None,
            "download_s": round(max(verified.values()) - first_frame, 3),
            "publish_span_s": round(last_frame - first_frame, 3),
            "downloaded_s": round(max(downloaded), 3) if len(downloaded) == len(names) else None,
            "verified_spread_s": round(max(verified.values()) - min(verified.values()), 3),
            "shared_bytes": shared, "repair_bytes": repair, "frames": len(frames),
            "heap_min": min(lows) if lows else None, "heap_samples": len(lows),
            "trial_heap_min": min(trial) if trial else None,
        }
        if case.kill and "killed" in kill:
            out.update(self._resume(names[0], t0, kill))
        return out

    def _resume(self, node: str, t0: float, kill: dict[str, Any]) -> dict[str, Any]:
        tap = self.tap
        mine = [f for f in tap.frames if f.t >= t0 and f.to in (node, None)]
        before = {f.unit for f in mine if f.t <= kill["killed"]}
        again = [f for f in mine if f.t > kill["killed"] and f.unit in before]
        wants = tap.wants[node]
        last_before = next((w for t, w in reversed(wants) if t <= kill["killed"]), None)
        first_after = next((w for t, w in wants if t > kill["restarted"]), None)
        held_before = tap.held(last_before, self.units) if last_before else 0
        held_after = tap.held(first_after, self.units) if first_after else 0
        # Beyond one image: every frame published to it twice or more, also those sent to the dead node.
        once = {f.unit: f.size for f in mine}
        extra = sum(f.size for f in mine) - sum(once.values())
        return {"resume_sent_before_kill": len(before), "resume_held_before_kill": held_before,
                "resume_held_after_restart": held_after, "resume_units_again": len(again),
                "resume_again_bytes": sum(f.size for f in again), "resume_redownloaded_bytes": extra}


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    window = args.window or firmware_window()
    _say(f"building a release of about {IMAGE} bytes")
    release = big_release(work, size=IMAGE, version=VERSION)
    size = release.manifest.size
    _say(f"release {VERSION}: {size} bytes, {release.units()} frames; firmware window {firmware_window()}")
    topics = Topics(root="bench/home", fleet="bench/fleet")
    master = secrets.token_bytes(32).hex()
    limit = args.limit
    broker = Mosquitto()
    postgres = EmbeddedPostgres(work / "pg", port=free_port(), password=secrets.token_urlsafe(16))
    services: list[ServiceProcess] = []
    proxy = None
    broker.start()
    try:
        postgres.start()
        for db in ("provisioner", "ota"):
            postgres.create_database(db)
        proxy = ProxyProcess(broker.port, rtt=RTT, max_seconds=limit + 60)
        common = {"PYTHONPATH": str(ROOT), "NODEFLEET_MQTT_URL": broker.url, "NODEFLEET_TOPIC_ROOT": topics.root,
                  "NODEFLEET_FLEET_ROOT": topics.fleet, "NODEFLEET_LOG_FORMAT": "json",
                  "NODEFLEET_OTA_MASTER_KEY": master}
        services.append(ServiceProcess("services.provisioner", {
            **common, "NODEFLEET_DATABASE_URL": postgres.dsn("provisioner"), "NODEFLEET_INSTANCE": "bench-prov",
            "NODEFLEET_PROVISIONER_CREDENTIALS": "none", "NODEFLEET_PROVISIONER_HTTP_PORT": "-1",
            "NODEFLEET_PROVISIONER_BROKER_HOST": "127.0.0.1",
            "NODEFLEET_PROVISIONER_BROKER_PORT": str(proxy.port)}, work / "provisioner.log", "provisioner_ready"))
        services.append(ServiceProcess("services.ota", {
            **common, "NODEFLEET_DATABASE_URL": postgres.dsn("ota"), "NODEFLEET_INSTANCE": "bench-ota"},
            work / "ota.log", "ota_ready"))
        for service in services:
            await service.wait_ready()
        client = wire.Client(wire.BrokerAddress.parse(broker.url), client_id=new_client_id("bench-tap"), nodelay=True)
        async with client:
            tap = Tap(client, topics, table=release.units() - len(release.manifest.blocks))
            await tap.start()
            feeder = asyncio.create_task(tap.feed())
            try:
                info = await tap.request(OTA_SERVICE, "release",
                                         {"file": base64.b64encode(encode(release)).decode()}, timeout=60)
                _say(f"uploaded: {info['version']}, {info['blocks']} blocks")
                pids = {"broker": broker._process.pid if broker._process else None, "proxy": proxy.process.pid,
                        "provisioner": services[0].process.pid, "ota": services[1].process.pid,
                        "bench": os.getpid()}
                b = Bench(work=work, heap=args.heap, release=release, tap=tap, broker_url=broker.url,
                          proxy_port=proxy.port, topics=topics, pids=pids)
                async with asyncio.timeout(limit):
                    return await cases(b, args, window, size)
            finally:
                feeder.cancel()
    finally:
        for service in services:
            service.stop()
        if proxy is not None:
            proxy.stop()
            _say(f"delay proxy: {proxy.counts}")
        broker.stop()
        postgres.stop("immediate")


async def cases(b: Bench, args: argparse.Namespace, window: int, size: int) -> dict[str, Any]:
    repeats = 1 if args.quick else 3
    results: list[dict[str, Any]] = []

    async def one(case: Case) -> dict[str, Any]:
        result = await b.run(case)
        results.append(result)
        _say(f"  {case.label}: window {case.window}, {case.nodes} node(s): verified {result['verified_s']} s "
             f"(first frame {result['first_frame_s']} s, download {result['download_s']} s), updated "
             f"{result['updated_s']} s, published {result['shared_bytes'] + result['repair_bytes']} B, "
             f"heap_min {result['heap_min']}")
        return result

    def median(rs: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(r[key] for r in rs), 3)

    windows = sorted({STOP_AND_WAIT, window, 8, 16, 32})
    single: dict[int, list[dict[str, Any]]] = {w: [] for w in windows}
    for rep in range(repeats):
        for w in windows:
            single[w].append(await one(Case(f"w{w}r{rep}", 1, w)))
    fleet_windows = sorted({window, 32} if args.quick else {window, 16, 32})
    fleet = {w: await one(Case(f"fleet{w}", FLEET, w)) for w in fleet_windows}
    resume = await one(Case("resume", 1, window, kill=True))
    flash = None
    if args.flash_kbps:
        flash = await one(Case("flash", 1, window, flash_bps=int(args.flash_kbps * 1000)))

    per_window = {w: {"verified_s": median(rs, "verified_s"), "download_s": median(rs, "download_s"),
                      "publish_span_s": median(rs, "publish_span_s"),
                      "first_frame_s": median(rs, "first_frame_s"), "first_want_s": median(rs, "first_want_s"),
                      "first_offer_s": median(rs, "first_offer_s"),
                      "updated_s": median(rs, "updated_s") if all(r["updated_s"] for r in rs) else None}
                  for w, rs in single.items()}
    saw = per_window[STOP_AND_WAIT]
    for w, f in per_window.items():
        f["speedup"] = round(saw["verified_s"] / f["verified_s"], 2)
        f["download_speedup"] = round(saw["download_s"] / f["download_s"], 2)
    head, crowd = per_window[window], fleet[window]
    published = crowd["shared_bytes"] + crowd["repair_bytes"]
    lows = [r["heap_min"] for r in results if r["heap_min"]]
    trial_lows = [r["trial_heap_min"] for r in results if r["trial_heap_min"]]
    figures: dict[str, Any] = {
        "image_bytes": size,
        "rtt_ms": round(RTT * 1000),
        "single_node_s": head["verified_s"],
        "stop_and_wait_s": saw["verified_s"],
        "speedup": head["speedup"],
        "n_nodes": FLEET,
        "n_nodes_s": crowd["verified_s"],
        "n_nodes_ratio": round(crowd["verified_s"] / head["verified_s"], 2),
        "ota_bytes_published_per_node": round(published / FLEET),
        "resume_redownloaded_bytes": resume.get("resume_redownloaded_bytes"),
        "peak_heap_kb": round(min(lows) / 1024, 1) if lows else None,
        "trial_heap_kb": round(min(trial_lows) / 1024, 1) if trial_lows else None,
        "heap": b.heap,
        "window": window,
    }
    if flash is not None:
        rate = size / flash["download_s"]  # first frame to verified: the whole-image check counts against it
        figures.update(flash_kbps=args.flash_kbps, flash_rate_share=round(rate / flash["flash_bps"], 3))
    frame = 20 + 4096
    goals = {
        "speedup>=10": figures["speedup"] >= 10,
        "download_speedup>=10": head["download_speedup"] >= 10,
        "n_nodes_ratio<=1.5": figures["n_nodes_ratio"] <= 1.5,
        "published<=0.1_image_per_node": published / FLEET <= 0.1 * size,
        "resume<=window+save": (resume.get("resume_redownloaded_bytes") or 0) <= (window + SAVE_EVERY) * frame,
        "peak_heap>=20KB": bool(lows) and min(lows) >= 20 * 1024,
        "trial_heap>=20KB": bool(trial_lows) and min(trial_lows) >= 20 * 1024,
    }
    if flash is not None:
        goals["flash_rate_share>=0.85"] = figures["flash_rate_share"] >= 0.85
    if b.install_failures:
        _say(f"install (after verified) did not reach updated in {len(b.install_failures)} case(s); first node's "
             f"output:\n{b.install_failures[0]['output']}")
    fleet_ratio = {w: round(f["verified_s"] / per_window[w]["verified_s"], 2) for w, f in fleet.items()}
    fleet_published = {w: round((f["shared_bytes"] + f["repair_bytes"]) / FLEET) for w, f in fleet.items()}
    details = {"fleet_ratio": fleet_ratio, "fleet_published_per_node": fleet_published,
               "install_failures": [{k: v for k, v in f.items() if k != "output"} for f in b.install_failures[:2]],
               "windows": per_window, "fleet": fleet, "resume": resume, "flash": flash, "goals": goals,
               "resume_goal_bytes": (window + SAVE_EVERY) * frame, "repeats": repeats,
               "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}
    return {"figures": figures, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each single-node case once, 20 nodes at one window")
    parser.add_argument("--heap", default=HEAP, help="the nodes' interpreter heap (default %(default)s)")
    parser.add_argument("--window", type=int, default=None,
                        help="window of the headline figures (default: the firmware's ota_window default)")
    parser.add_argument("--flash-kbps", type=float, default=None,
                        help="flash-speed model on the nodes, KB/s (1000 bytes), e.g. 100: one more single-node run")
    parser.add_argument("--limit", type=float, default=None, help="stop after this many seconds (default 420 / 1800)")
    args = parser.parse_args()
    args.limit = args.limit or (420.0 if args.quick else 1800.0)
    work = Path(tempfile.mkdtemp(prefix="nodefleet-bench-ota-"))
    try:
        out = asyncio.run(bench(args, work))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work, ignore_errors=True)
    for goal, met in out["details"]["goals"].items():
        _say(f"goal {goal}: {'met' if met else 'MISSED'}")
    print(json.dumps(out["details"]))
    print(json.dumps(out["figures"]))


if __name__ == "__main__":
    main()
