"""The fleet requests the ota service answers (``fleet/ota/request/<action>``), as typed handlers over the
models of nodefleet.contracts.ota; the engine and the directory do the work."""

from __future__ import annotations

from nodefleet.contracts.ota import (
    HistoryQuery,
    HistoryRow,
    LanOffer,
    Offer,
    ReleaseInfo,
    ReleasesQuery,
    ReleaseUpload,
    RolloutRef,
    RolloutStart,
    RolloutView,
    StatusQuery,
)
from nodefleet.fleet import Handler, typed

from .directory import Directory
from .engine import Engine


def handlers(engine: Engine, directory: Directory) -> dict[str, Handler]:
    @typed
    async def release(request: ReleaseUpload) -> ReleaseInfo:
        return await engine.add_release(request)

    @typed
    async def releases(request: ReleasesQuery) -> list[ReleaseInfo]:
        return await engine.list_releases()

    @typed
    async def rollout_start(request: RolloutStart) -> RolloutView:
        await engine.check_start(request)
        return await engine.start(request, await directory.targets(request))

    @typed
    async def rollout_pause(request: RolloutRef) -> RolloutView:
        return await engine.pause(request.id)

    @typed
    async def rollout_resume(request: RolloutRef) -> RolloutView:
        return await engine.resume(request.id)

    @typed
    async def rollout_abort(request: RolloutRef) -> RolloutView:
        return await engine.abort(request.id)

    @typed
    async def status(request: StatusQuery) -> list[RolloutView]:
        return await engine.status(request.id)

    @typed
    async def history(request: HistoryQuery) -> list[HistoryRow]:
        return await engine.history(request.node, request.limit)

    @typed
    async def lan_offer(request: LanOffer) -> Offer:
        await directory.targets(RolloutStart(release=request.release, nodes=[request.node]))  # known, provisioned
        return await engine.lan_offer(request)

    return {"lan_offer": lan_offer, "release": release, "releases": releases, "rollout_start": rollout_start, "rollout_pause": rollout_pause,
            "rollout_resume": rollout_resume, "rollout_abort": rollout_abort, "status": status, "history": history}
