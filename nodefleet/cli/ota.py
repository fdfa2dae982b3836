"""``nodefleet ota ...``: firmware releases for over-the-air updates (docs/ota.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..contracts.ota import table_chunks
from ..contracts.topics import TopicError, validate_release
from ..ota_release import ReleaseError, build, read, write
from .errors import CliError
from .group import main
from .output import console, note


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
