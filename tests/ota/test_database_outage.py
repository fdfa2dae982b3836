"""The ota service's PostgreSQL stopped mid-rollout and started again: the service (its own process) stays up,
requests meanwhile are told to try again, and what the nodes said while it could not be written is not lost."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from structlog.testing import capture_logs

from conftest import wait_for
from nodefleet.errors import RequestError, StorageUnavailable
from services.ota.app import serve
from services.ota.store import OtaStore

from .conftest import answers, fleet, operator, release_file, service_process, settings_for, stop_process
from .test_service import b64, rollout_state

pytestmark = pytest.mark.timeout(180)
OUTAGE = 20.0


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def asked(op, action: str, data: dict, *, timeout: float = 30.0):
    """A request asked again while it goes unanswered (one sent as a term ends is lost), as a caller does."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await op(action, data, timeout=2)
        except RequestError as exc:
            if "no answer" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                raise


async def test_updated_while_the_database_is_down_is_not_lost(broker, private_postgres, topics, release_140,
                                                               tmp_path):
    names = [f"p{i}" for i in range(4)]
    database = private_postgres.dsn("nodefleet")
    log = tmp_path / "ota.log"
    trial = asyncio.Event()  # the nodes' trial boots end while PostgreSQL is down
    service = await service_process(broker.url, topics, database, log)
    try:
        async with operator(broker.url, topics) as op, fleet(broker.url, topics, names, trial=trial) as peers:
            await wait_for(lambda: answers(op), timeout=20)
            await op("release", {"file": b64(release_file(release_140))})
            await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "pg"})
            await rollout_state(op, "pg", "running")

            async def installing() -> bool:
                [view] = await op("status", {"id": "pg"})
                return view["counts"] == {"updating": len(names)}
            await wait_for(installing, timeout=60, interval=0.2)

            rss = [_rss_kb(service.pid)]
            await asyncio.to_thread(private_postgres.stop, "fast")
            stopped = asyncio.get_running_loop().time()
            try:
                with pytest.raises(RequestError) as refused:
                    await op("history", {"node": names[0]}, timeout=5)
                # Said plainly: the database (while this term lasts) or no answer (between terms), never a crash.
                assert "internal error" not in str(refused.value), refused.value
                trial.set()  # every node now says ``updated``: written nowhere, or heard by no one
                await wait_for(lambda: all(p.state == "updated" for p in peers.values()), timeout=10)
                while asyncio.get_running_loop().time() < stopped + OUTAGE:  # down for 20 s, its RSS sampled
                    assert service.returncode is None, "the ota service exited while its PostgreSQL was down"
                    rss.append(_rss_kb(service.pid))
                    await asyncio.sleep(1.0)
            finally:
                await asyncio.to_thread(private_postgres.start)

            await wait_for(lambda: answers(op), timeout=40)  # active again (its reconnects back off up to 10 s)

            async def ended() -> dict | None:
                [view] = await asked(op, "status", {"id": "pg"})
                return view if view["state"] in ("done", "halted") else None
            view = await wait_for(ended, timeout=60, interval=0.2)
            assert view["state"] == "done" and view["counts"] == {"updated": len(names)}, view
            assert service.returncode is None
            rss.append(_rss_kb(service.pid))
            print(f"ota, PostgreSQL down {OUTAGE:g} s: RSS {rss[0]} kB before, at most {max(rss)} kB, "
                  f"{rss[-1]} kB after; rollout {view['reason']}")
            assert max(rss) < rss[0] + 20_000, rss  # bounded: reconnect attempts, not a growing backlog
            for name, peer in peers.items():
                assert peer.offers == 1, (name, peer.offers)  # nobody was sent back to the start
                assert peer.states.count("updated") >= 2, (name, peer.states)  # said again when offered again
                assert peer.withdrawn >= 1, name  # once heard, the offer is withdrawn: no more repeats
                history = [e["state"] for e in reversed(await asked(op, "history", {"node": name}))]
                assert history[-1] == "updated" and history.count("updated") == 1, (name, history)
    finally:
        await stop_process(service)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    kinds = {e.get("event") for e in events}
    assert "Traceback" not in log.read_text()
    assert {"ota_leadership_lost", "ota_tables_behind"} & kinds, kinds  # a new term read the tables back
    assert "database_unavailable" in kinds


async def test_a_change_that_could_not_be_written_starts_a_new_term_from_the_tables(broker, database, topics,
                                                                                    release_140, monkeypatch):
    """PostgreSQL lost under one write while the leadership lock's own session lived on: the rollout in memory
    had moved past the tables, so the service reads them back (as after a restart) and the rollout still ends."""
    names = [f"w{i}" for i in range(3)]
    calls = {"record": 0}
    record = OtaStore.record

    async def record_once_failing(self, rollout, actions, *, now):
        calls["record"] += 1
        if calls["record"] == 3:  # after the start's: a node's first progress
            raise StorageUnavailable("PostgreSQL is not reachable: connection was closed in the middle of operation")
        await record(self, rollout, actions, now=now)

    monkeypatch.setattr(OtaStore, "record", record_once_failing)
    settings = settings_for(broker.url, database, topics, leader_poll=0.3)
    ready = asyncio.Event()
    with capture_logs() as logs:
        service = asyncio.create_task(serve(settings, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            async with operator(broker.url, topics) as op, fleet(broker.url, topics, names, delay=0.02) as peers:
                await op("release", {"file": b64(release_file(release_140))})
                await op("rollout_start", {"release": "1.4.0", "all": True, "canary": 0, "id": "w"})

                async def ended() -> dict | None:
                    [view] = await asked(op, "status", {"id": "w"})
                    return view if view["state"] in ("done", "halted") else None
                view = await wait_for(ended, timeout=60, interval=0.2)
            assert view["state"] == "done" and view["counts"] == {"updated": len(names)}, view
            assert all(peer.offers == 1 for peer in peers.values())
        finally:
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
    events = [entry["event"] for entry in logs]
    assert calls["record"] > 3
    assert events.count("ota_tables_behind") == 1 and events.count("ota_ready") == 2, events
    assert "ota_leadership_lost" not in events  # the same lock, a new term
