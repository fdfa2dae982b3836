"""``nodefleet ota ...``: firmware releases for over-the-air updates (docs/ota.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..contracts.ota import OTA_SERVICE, ReleaseInfo, ReleaseUpload, RolloutStart, RolloutView, table_chunks
from ..contracts.topics import TopicError, validate_release
from ..ota_release import ReleaseError, build, read, write
from ..settings import CommonSettings
from .connect import connect
from .errors import CliError
from .group import main
from .options import fleet_options, format_option, node_name
from .output import Column, console, emit, note
from .requests import request_on, service_request
from .running import run, stop_on_signals
from .times import iso_time


def _version(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_release(value)
    except TopicError as exc:
        raise click.BadParameter(str(exc).removeprefix("invalid release ")) from None


def _block_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value % 1024 or not 1024 <= value <= 16384:
        raise click.BadParameter("use a multiple of 1024 from 1024 to 16384 (4096 is one ESP32 flash sector)")
    return value


@main.group()
def ota() -> None:
    """Firmware releases and over-the-air updates.

    A release is the firmware's modules compiled with mpy-cross into one
    image, and a manifest: version, files with size and sha256, the sha256 of
    every block and of the whole image.  Nodes check each block before they
    write it and install only a release whose offer the ota service tagged
    with the node's own key.
    """


@ota.command("build")
@click.argument("firmware_dir", default="firmware", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--version", "version", required=True, callback=_version, metavar="VERSION",
              help="Release version, e.g. 1.4.0 or 1.5.0-rc.1 (nodes refuse one older than theirs unless forced)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Release file to write  [default: nodefleet-VERSION.nfr]")
@click.option("--block-size", type=int, default=4096, show_default=True, callback=_block_size, metavar="BYTES",
              help="Bytes per block (one frame on the wire, one check on the node)")
@click.option("--target", type=click.Choice(["esp32", "unix"]), default="esp32", show_default=True,
              help="Which HAL goes in: the ESP32's or the unix port's (simulated nodes)")
def build_command(firmware_dir: Path, version: str, output: Path | None, block_size: int, target: str) -> None:
    """Compile FIRMWARE_DIR (default: ./firmware) and write a release file.

    \b
    Examples:
      nodefleet ota build --version 1.4.0
      nodefleet ota build firmware/ --version 1.5.0-rc.1 -o rc1.nfr
      nodefleet ota build --version 1.4.0 --target unix     # for simulated nodes

    The same sources give the same file, byte for byte; `nodefleet ota
    inspect FILE` checks one against its manifest.
    """
    output = output or Path(f"nodefleet-{version}.nfr")
    try:
        release = build(firmware_dir, version=version, block_size=block_size, target=target)  # type: ignore[arg-type]
        write(release, output)
    except ReleaseError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    m = release.manifest
    console().print(f"release {m.version}: {len(m.files)} modules, {m.size} bytes in {len(m.blocks)} blocks "
                    f"of {m.block_size}, sha256 {m.sha256}")
    note(f"written to {output}")


@ota.command("inspect")
@click.argument("release_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON")
def inspect_command(release_file: Path, as_json: bool) -> None:
    """Check a release file against its manifest and show what it holds.

    \b
    Examples:
      nodefleet ota inspect nodefleet-1.4.0.nfr
      nodefleet ota inspect nodefleet-1.4.0.nfr --json | jq .blocks

    Exits with an error naming the first thing that does not match (a
    changed block, a truncated file, a bad manifest).
    """
    try:
        release = read(release_file)
    except ReleaseError as exc:
        raise CliError(f"{release_file}: {exc}") from None
    m = release.manifest
    if as_json:
        click.echo(json.dumps(m.model_dump(mode="json", exclude_none=True), indent=2))
        return
    console().print(f"release {m.version} ({m.format}, mpy {m.mpy_arch}): {m.size} bytes, {len(m.blocks)} blocks "
                    f"of {m.block_size} + {table_chunks(len(m.blocks), m.block_size)} table frame(s), "
                    f"sha256 {m.sha256}")
    for f in m.files:
        console().print(f"  {f.path:<24} {f.size:>7} B  {f.sha256[:16]}…")
    note("every block, file and the whole image match the manifest")


# -- the ota service: releases, rollouts, status, history -----------------------

REQUEST_TIMEOUT = 10.0
WATCH_INTERVAL = 1.0


def _share(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip()
    try:
        share = float(text.removesuffix("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a share: write e.g. 10% or 0.1") from None
    if not 0 <= share < 1:
        raise click.BadParameter("a share from 0% to below 100%")
    return share


def _ask(settings: CommonSettings, action: str, data: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> Any:
    return run(service_request(settings, OTA_SERVICE, action, data, timeout=timeout))


@ota.command("release")
@click.argument("release_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@fleet_options
def release_command(release_file: Path, settings: CommonSettings) -> None:
    """Hand a release file (from `nodefleet ota build`) to the ota service.

    \b
    Examples:
      nodefleet ota release nodefleet-1.4.0.nfr
      nodefleet ota releases                      # what is kept

    The file is checked here first and again by the service; a damaged file or
    a version already kept is refused, saying why.
    """
    try:
        release = read(release_file)
    except ReleaseError as exc:
        raise CliError(f"{release_file}: {exc}") from None
    data = base64.b64encode(release_file.read_bytes()).decode()
    info = ReleaseInfo.model_validate(_ask(settings, "release", ReleaseUpload(file=data).model_dump(), timeout=30))
    console().print(f"release {info.version} kept: {info.size} bytes in {info.blocks} blocks of {info.block_size}, "
                    f"sha256 {info.sha256[:16]}…")
    note(f"next: nodefleet ota rollout start {release.manifest.version} --to all")


@ota.command("releases")
@fleet_options
@format_option
def releases_command(settings: CommonSettings, fmt: str) -> None:
    """List the releases the ota service keeps."""
    rows = _ask(settings, "releases", {})
    if not rows and fmt == "table":
        note("no releases kept yet: nodefleet ota build --version X, then nodefleet ota release FILE")
        return
    emit(rows, [Column(key="version", title="version"), Column(key="format", title="format"),
                Column(key="size", title="bytes", justify="right"), Column(key="block_size", title="block", justify="right"),
                Column(key="sha256", title="sha256", human=lambda v: f"{v[:16]}…"),
                Column(key="created", title="kept", human=lambda v: iso_time(v))], fmt)


@ota.group("rollout")
def rollout_group() -> None:
    """Start, pause, resume or abort a staged rollout of a release."""


@rollout_group.command("start")
@click.argument("version", callback=_version)
@click.option("--to", "to", multiple=True, metavar="all|NODE",
              help="`all` provisioned nodes, or node names (repeat, or separate with commas)")
@click.option("--home", metavar="HOME", help="Every provisioned node of this home")
@click.option("--canary", type=click.IntRange(0, 10_000), default=1, show_default=True,
              help="Nodes updated first, alone; a failure among them halts the rollout")
@click.option("--stages", default="100%", show_default=True, metavar="P%,P%,...",
              help="Cumulative shares of the targets, e.g. 10%,50%,100%")
@click.option("--max-failures", default="10%", show_default=True, callback=_share, metavar="P%",
              help="Share of finished nodes that may fail before the rollout halts")
@click.option("--min-sample", type=click.IntRange(1, 10_000), default=3, show_default=True,
              help="Finished nodes needed before the failure share counts")
@click.option("--force", is_flag=True, help="Offer even to nodes that run the same or a newer version")
@click.option("--id", "rollout_id", metavar="ID", help="Name the rollout (default: VERSION-xxxxxx)")
@fleet_options
def rollout_start(version: str, to: tuple[str, ...], home: str | None, canary: int, stages: str,
                  max_failures: float, min_sample: int, force: bool, rollout_id: str | None,
                  settings: CommonSettings) -> None:
    """Offer release VERSION to nodes, canary first, then stage by stage.

    \b
    Examples:
      nodefleet ota rollout start 1.4.0 --to all
      nodefleet ota rollout start 1.4.0 --to porch --to kitchen --canary 0
      nodefleet ota rollout start 1.4.0 --home cabin --stages 10%,50%,100% --max-failures 10%

    A stage starts once the one before it updated (all but --max-failures of
    it); the rollout halts by itself when a canary fails or, after
    --min-sample nodes finished, the failed share is over --max-failures.
    Watch it with `nodefleet ota status --watch`.
    """
    names = [n.strip() for part in to for n in part.split(",") if n.strip()]
    if (names == ["all"]) + bool(home) + (bool(names) and names != ["all"]) != 1:
        raise click.UsageError("name the targets one way: --to all, --to NODE [--to NODE ...], or --home HOME")
    for name in names:
        if name != "all":
            node_name(None, None, name)  # type: ignore[arg-type]
    data: dict[str, Any] = {"release": version, "canary": canary, "stages": stages, "max_failures": max_failures,
                            "min_sample": min_sample, "force": force}
    if names == ["all"]:
        data["all"] = True
    elif home:
        data["home"] = home
    else:
        data["nodes"] = names
    if rollout_id:
        data["id"] = rollout_id
    view = RolloutView.model_validate(_ask(settings, "rollout_start", RolloutStart(**data).model_dump()))
    console().print(f"rollout {view.id} of {view.release}: {len(view.targets)} nodes in {len(view.stages)} stage(s) "
                    f"({', '.join(str(len(s)) for s in view.stages)})")
    note(f"next: nodefleet ota status {view.id} --watch")


def _operate(action: str, verb: str) -> Any:
    @click.argument("rollout_id", metavar="ID")
    @fleet_options
    def command(rollout_id: str, settings: CommonSettings) -> None:
        view = RolloutView.model_validate(_ask(settings, action, {"id": rollout_id}))
        console().print(f"rollout {view.id}: {view.state}" + (f" ({view.reason})" if view.reason else ""))

    command.__doc__ = f"{verb}\n\nID is the rollout's, as `nodefleet ota status` lists the open ones."
    return command


rollout_group.command("pause")(_operate("rollout_pause", "Pause a rollout: withdraw the offers not taken up yet; "
                                         "downloads under way go on. `nodefleet ota rollout resume ID` goes on."))
rollout_group.command("resume")(_operate("rollout_resume", "Resume a paused or halted rollout: offers go out again "
                                          "(resuming a halted one accepts its failures so far)."))
rollout_group.command("abort")(_operate("rollout_abort", "Abort a rollout for good: withdraw every offer that can "
                                         "still be withdrawn."))


@ota.command("status")
@click.argument("rollout_id", metavar="[ROLLOUT]", required=False)
@click.option("--watch", is_flag=True, help="Keep showing it, every second, until the rollout ends (Ctrl-C stops)")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON")
@fleet_options
def status_command(rollout_id: str | None, watch: bool, as_json: bool, settings: CommonSettings) -> None:
    """Show a rollout (or every open one): per node its state, percent, speed and ETA.

    \b
    Examples:
      nodefleet ota status
      nodefleet ota status 1.4.0-a1b2c3 --watch
    """
    query = {"id": rollout_id} if rollout_id else {}
    if as_json:
        click.echo(json.dumps(_ask(settings, "status", query), indent=2))
        return
    if watch and sys.stdout.isatty():
        run(_watch(settings, query))
        return
    views = [RolloutView.model_validate(v) for v in _ask(settings, "status", query)]
    if not views:
        note("no open rollout: nodefleet ota rollout start VERSION --to all starts one")
    for view in views:
        _print_plain(view)


def _print_plain(view: RolloutView) -> None:
    out = console()
    out.print(f"rollout {view.id}  release {view.release}  {view.state}  {view.percent:.0f}%  stage "
              f"{view.stage + 1}/{len(view.stages)}" + (f"  ({view.reason})" if view.reason else ""))
    rows = [t.model_dump() for t in view.targets]
    emit(rows, [Column(key="node", title="node"), Column(key="stage", title="stage", justify="right"),
                Column(key="state", title="state"),
                Column(key="percent", title="%", human=lambda v: f"{v:.0f}", justify="right"),
                Column(key="rate", title="speed", human=_speed, justify="right"),
                Column(key="eta", title="eta", human=_eta, justify="right"),
                Column(key="reason", title="reason")], "table")


def _speed(rate: float | None) -> str:
    return "" if not rate else f"{rate / 1024:.1f} KiB/s"


def _eta(eta: float | None) -> str:
    return "" if eta is None else f"{eta:.0f} s"


async def _watch(settings: CommonSettings, query: dict[str, Any]) -> None:
    """Rich progress bars per stage and per node, refreshed from the service each second."""
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn

    stop = asyncio.Event()
    async with connect(settings) as connection:
        with stop_on_signals(stop), Live(console=console(), refresh_per_second=4) as live:
            while not stop.is_set():
                views = [RolloutView.model_validate(v)
                         for v in await request_on(connection, OTA_SERVICE, "status", query, timeout=REQUEST_TIMEOUT)]
                bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TextColumn("{task.fields[state]}"), TextColumn("{task.fields[speed]}"),
                                TextColumn("{task.fields[eta]}"))
                for view in views:
                    bars.add_task(f"[bold]{view.id}[/] {view.release}", total=100, completed=view.percent,
                                  state=view.state, speed="", eta=view.reason or "")
                    for number, nodes in enumerate(view.stages):
                        targets = [t for t in view.targets if t.node in set(nodes)]
                        done = sum(t.percent for t in targets) / max(len(targets), 1)
                        bars.add_task(f"  stage {number + 1}", total=100, completed=done,
                                      state=f"{sum(t.state == 'updated' for t in targets)}/{len(targets)} updated",
                                      speed="", eta="")
                        for t in targets:
                            bars.add_task(f"    {t.node}", total=100, completed=t.percent, state=t.state,
                                          speed=_speed(t.rate), eta=_eta(t.eta))
                live.update(bars)
                if not views or all(v.state not in ("running", "paused") for v in views):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)


@ota.command("history")
@click.argument("node", callback=node_name)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@fleet_options
@format_option
def history_command(node: str, limit: int, settings: CommonSettings, fmt: str) -> None:
    """A node's OTA events, newest first: every state it went through, in which rollout, and why."""
    rows = _ask(settings, "history", {"node": node, "limit": limit})
    if not rows and fmt == "table":
        note(f"no OTA events of {node}")
        return
    emit(rows, [Column(key="ts", title="time", human=iso_time), Column(key="rollout", title="rollout"),
                Column(key="state", title="state"), Column(key="code", title="code"),
                Column(key="reason", title="reason")], fmt)
