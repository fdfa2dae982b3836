"""OTA payloads (docs/ota.md): the release manifest, the offer, progress, want, and the binary block frame.

A release is an image cut into ``block_size`` blocks.  The manifest (in the
release file and in PostgreSQL) lists every block's sha256; the node never
holds it.  It gets the *block table* (the 32-byte digests back to back) as
frames of their own, each checked against ``Offer.table``, and the offer is
authenticated by an HMAC-SHA256 tag made with the node's own key over
:func:`auth_message`: the blocks stay shared, only the small tag is per node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ..errors import InputError
from .payloads import Epoch, Identifier, Part, Payload, Seq, ShortText, Text
from .topics import NODE_NAME_PATTERN, RELEASE_PATTERN

__all__ = [
    "OTA_STATES", "FINAL_STATES", "DEFAULT_BLOCK_SIZE", "DIGEST_SIZE", "FRAME_HEADER", "FRAME_HEADER_SIZE",
    "KIND_TABLE", "KIND_BLOCK", "ImageFormat", "OtaState", "ManifestFile", "Manifest", "Offer", "Progress", "Want",
    "Frame", "FrameError", "encode_frame", "decode_frame", "auth_message", "offer_tag", "device_key",
    "table_chunks", "bitmap", "bitmap_bits", "canonical_json", "OTA_PAYLOADS",
    "OTA_SERVICE", "OtaRequest", "ReleaseUpload", "ReleasesQuery", "ReleaseInfo", "RolloutStart",
    "RolloutRef", "StatusQuery", "HistoryQuery", "TargetView", "RolloutView", "HistoryRow",
]

DEFAULT_BLOCK_SIZE = 4096
"""One flash sector of the ESP32: a block is written with one erase, and one frame fits the node's heap."""
DIGEST_SIZE = 32
MAX_IMAGE_BYTES = 16 * 1024 * 1024

FRAME_MAGIC = b"NF"
FRAME_VERSION = 1
FRAME_HEADER = ">2sBBI8sI"
"""magic ``NF``, version 1, kind, index, release id (image sha256[:8]), data length; big-endian."""
FRAME_HEADER_SIZE = struct.calcsize(FRAME_HEADER)
KIND_TABLE = 1
"""A chunk of the block table (``block_size`` bytes of 32-byte digests, the last one shorter)."""
KIND_BLOCK = 2
"""A block of the image."""

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Release = Annotated[str, StringConstraints(pattern=f"^{RELEASE_PATTERN}$")]
BlockSize = Annotated[int, Field(ge=1024, le=16384, multiple_of=1024)]
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_BYTES)]
FilePath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,95}$")]
ImageFormat = Literal["nfi1", "esp32-app"]
"""``nfi1``: compiled modules laid out by ``nodefleet ota build``; ``esp32-app``: a whole MicroPython firmware image."""
OtaState = Literal["queued", "downloading", "downloaded", "verified", "updating", "updated", "failed", "rolled_back"]
OTA_STATES: tuple[OtaState, ...] = (
    "queued", "downloading", "downloaded", "verified", "updating", "updated", "failed", "rolled_back")
FINAL_STATES: frozenset[str] = frozenset({"updated", "failed", "rolled_back"})


def canonical_json(obj: object) -> bytes:
    """The one byte form of a JSON document that is hashed or stored: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _blocks_for(size: int, block_size: int) -> int:
    return -(-size // block_size)


def table_chunks(blocks: int, block_size: int) -> int:
    """How many frames carry the block table of ``blocks`` blocks."""
    return _blocks_for(blocks * DIGEST_SIZE, block_size)


class ManifestFile(Part):
    """One module inside an ``nfi1`` image: where it lies and its own sha256."""

    path: FilePath
    offset: Annotated[int, Field(ge=0)]
    size: Annotated[int, Field(ge=0)]
    sha256: Hex64

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        if ".." in path.split("/") or "//" in path or path.endswith("/"):
            raise ValueError("file paths are relative and plain")
        return path


class Manifest(Payload):
    """What a release is: its version, the image's size and sha256, every block's sha256, the files inside."""

    version: Release
    format: ImageFormat = "nfi1"
    block_size: BlockSize = DEFAULT_BLOCK_SIZE
    size: ImageSize
    sha256: Hex64
    blocks: list[Hex64] = Field(min_length=1, max_length=MAX_IMAGE_BYTES // 1024)
    files: list[ManifestFile] = Field(default_factory=list, max_length=256)
    mpy_arch: ShortText | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.blocks) != _blocks_for(self.size, self.block_size):
            raise ValueError(f"{self.size} bytes in blocks of {self.block_size} are "
                             f"{_blocks_for(self.size, self.block_size)} blocks, the manifest lists {len(self.blocks)}")
        end = 0
        for f in sorted(self.files, key=lambda f: f.offset):
            if f.offset < end or f.offset + f.size > self.size:
                raise ValueError(f"file {f.path} overlaps another or lies outside the image")
            end = f.offset + f.size
        if len({f.path for f in self.files}) != len(self.files):
            raise ValueError("file paths repeat")
        if self.format == "nfi1" and not self.files:
            raise ValueError("an nfi1 image lists its files")
        return self

    def table(self) -> bytes:
        """The block table: every block's digest, 32 bytes each, in block order."""
        return b"".join(bytes.fromhex(h) for h in self.blocks)

    def table_digests(self) -> list[str]:
        """sha256 of each table chunk, as the offer carries them."""
        table, bs = self.table(), self.block_size
        return [hashlib.sha256(table[i:i + bs]).hexdigest() for i in range(0, len(table), bs)]

    def release_id(self) -> bytes:
        """The 8 bytes every frame of this release carries."""
        return bytes.fromhex(self.sha256)[:8]

    def offer(self, *, node: str, key: bytes, stream: str, force: bool = False, rollout: str | None = None) -> Offer:
        """The offer of this release to ``node``, tagged with that node's key."""
        fields = {"release": self.version, "format": self.format, "size": self.size, "sha256": self.sha256,
                  "block_size": self.block_size, "blocks": len(self.blocks), "table": self.table_digests(),
                  "force": force}
        return Offer(**fields, stream=stream, rollout=rollout, tag=offer_tag(key, node, **fields))


class Offer(Payload):
    """``home/N/ota/offer`` (retained): download this release; an empty retained message withdraws it.

    Everything but ``stream`` and ``rollout`` is covered by ``tag``; a forged
    stream can only deliver frames that fail their digests.
    """

    release: Release
    format: ImageFormat = "nfi1"
    size: ImageSize
    sha256: Hex64
    block_size: BlockSize = DEFAULT_BLOCK_SIZE
    blocks: Annotated[int, Field(ge=1, le=MAX_IMAGE_BYTES // 1024)]
    table: list[Hex64] = Field(min_length=1, max_length=512)
    force: bool = False
    stream: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,200}$")]
    rollout: Identifier | None = None
    tag: Hex64

    @model_validator(mode="after")
    def _consistent(self) -> Offer:
        if self.blocks != _blocks_for(self.size, self.block_size):
            raise ValueError("blocks does not match size and block_size")
        if len(self.table) != table_chunks(self.blocks, self.block_size):
            raise ValueError("table does not list one digest per table chunk")
        return self

    def units(self) -> int:
        """Frames of a complete download: table chunks first, then blocks (the bit order of ``Want.have``)."""
        return len(self.table) + self.blocks

    def verify(self, key: bytes, node: str) -> bool:
        expected = offer_tag(key, node, release=self.release, format=self.format, size=self.size,
                             sha256=self.sha256, block_size=self.block_size, blocks=self.blocks,
                             table=self.table, force=self.force)
        return hmac.compare_digest(expected, self.tag)


class Progress(Payload):
    """``home/N/ota/progress``: a state transition or download progress of one node (not retained)."""

    release: Release
    state: OtaState
    seq: Seq | None = None
    ts: Epoch | None = None
    bytes: Annotated[int, Field(ge=0, le=MAX_IMAGE_BYTES)] = 0
    size: Annotated[int, Field(ge=0, le=MAX_IMAGE_BYTES)] = 0
    rate: Annotated[float, Field(ge=0)] | None = None
    """Bytes per second written over the last interval."""
    bad: Annotated[int, Field(ge=0)] = 0
    """Frames refused so far (digest mismatch, foreign release, malformed)."""
    code: Identifier | None = None
    reason: Text | None = None
    rollout: Identifier | None = None

    @model_validator(mode="after")
    def _failure_says_why(self) -> Progress:
        if self.state in ("failed", "rolled_back") and not (self.code and self.reason):
            raise ValueError(f"state {self.state} needs a code and a reason")
        if self.bytes > self.size:
            raise ValueError("more bytes than the image has")
        return self


class Want(Payload):
    """``home/N/ota/want``: flow control and repair in one message.

    ``have`` is a bitmap (base64) of the units the node has verified and
    written: table chunks first, then blocks; bit ``u`` is ``0x80 >> (u % 8)``
    of byte ``u // 8``.  The ota service may send this node at most
    ``got + window`` frames in all of its ``session`` (shared and repair);
    ``got`` counts every frame the node handled, good or bad.
    """

    release: Release
    session: Identifier
    got: Annotated[int, Field(ge=0)]
    window: Annotated[int, Field(ge=1, le=64)]
    have: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=2800)]

    def missing(self, units: int) -> list[int]:
        """Units this node still needs, of a download of ``units`` units."""
        have = bitmap_bits(self.have, units)
        return [u for u in range(units) if not have[u]]


OTA_PAYLOADS: dict[str, type[Payload]] = {"offer": Offer, "progress": Progress, "want": Want, "manifest": Manifest}
"""Model of each JSON OTA payload (``data`` frames are binary: :func:`decode_frame`)."""


# -- authenticity ------------------------------------------------------------


def device_key(master: bytes, node: str) -> bytes:
    """The node's OTA key: derived from the fleet's master key, handed to the node at provisioning."""
    return hmac.new(master, b"nodefleet-ota-key/1/" + node.encode(), hashlib.sha256).digest()


def auth_message(node: str, *, release: str, format: str, size: int, sha256: str, block_size: int, blocks: int,
                 table: list[str], force: bool) -> bytes:
    """The bytes the tag covers; firmware/ota.py builds the same from the offer it parsed."""
    fields = [node, release, format, str(size), sha256, str(block_size), str(blocks), ",".join(table),
              "1" if force else "0"]
    return ("nodefleet-ota/1\n" + "\n".join(fields)).encode()


def offer_tag(key: bytes, node: str, **fields) -> str:  # noqa: ANN003 - the fields of auth_message
    return hmac.new(key, auth_message(node, **fields), hashlib.sha256).hexdigest()


# -- bitmaps -------------------------------------------------------------------


def bitmap(have: set[int] | list[int], units: int) -> str:
    """``Want.have`` of the units in ``have``."""
    out = bytearray(-(-units // 8))
    for u in have:
        out[u >> 3] |= 0x80 >> (u & 7)
    return base64.b64encode(bytes(out)).decode()


def bitmap_bits(have: str, units: int) -> list[bool]:
    raw = base64.b64decode(have, validate=True)
    if len(raw) != -(-units // 8):
        raise FrameError(f"bitmap of {len(raw)} bytes for {units} units")
    return [bool(raw[u >> 3] & (0x80 >> (u & 7))) for u in range(units)]


# -- frames --------------------------------------------------------------------


class FrameError(InputError):
    """A data frame (or bitmap) that does not follow the OTA wire format."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    index: int
    release_id: bytes
    data: bytes


def encode_frame(*, kind: int, index: int, release_id: bytes, data: bytes) -> bytes:
    """One MQTT payload on ``ota/data`` or a release stream: 20-byte header, then the data."""
    if kind not in (KIND_TABLE, KIND_BLOCK) or len(release_id) != 8 or not 0 <= index < 2**32:
        raise FrameError(f"cannot frame kind {kind} index {index} with a {len(release_id)}-byte release id")
    return struct.pack(FRAME_HEADER, FRAME_MAGIC, FRAME_VERSION, kind, index, release_id, len(data)) + data


def decode_frame(payload: bytes) -> Frame:
    if len(payload) < FRAME_HEADER_SIZE:
        raise FrameError(f"a frame of {len(payload)} bytes is shorter than its header")
    magic, version, kind, index, release_id, length = struct.unpack_from(FRAME_HEADER, payload)
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise FrameError(f"not an OTA frame (magic {magic!r}, version {version})")
    if kind not in (KIND_TABLE, KIND_BLOCK):
        raise FrameError(f"unknown frame kind {kind}")
    if length != len(payload) - FRAME_HEADER_SIZE:
        raise FrameError(f"frame says {length} data bytes, carries {len(payload) - FRAME_HEADER_SIZE}")
    return Frame(kind, index, release_id, payload[FRAME_HEADER_SIZE:])


# -- the request plane: fleet/ota/request/<action> ------------------------------

OTA_SERVICE = "ota"
MAX_RELEASE_FILE = MAX_IMAGE_BYTES + 2 * 1024 * 1024
NodeName = Annotated[str, StringConstraints(pattern=f"^{NODE_NAME_PATTERN}$")]
HomeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
Share = Annotated[float, Field(ge=0, lt=1)]


class OtaRequest(BaseModel):
    """Base of every ota request: strict, so a typo is an error instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseUpload(OtaRequest):
    """``release``: a release file (``nodefleet ota build``) as base64; checked whole before it is kept."""

    file: Annotated[str, StringConstraints(max_length=-(-MAX_RELEASE_FILE // 3) * 4)]


class ReleasesQuery(OtaRequest):
    """``releases``: every kept release."""


class ReleaseInfo(BaseModel):
    version: Release
    sha256: Hex64
    format: ImageFormat
    size: int
    block_size: int
    blocks: int | None = None
    files: int | None = None
    created: float


class RolloutStart(OtaRequest):
    """``rollout_start``: offer ``release`` to the targets, stage by stage.

    Targets: ``all`` provisioned nodes, the provisioned nodes of ``home``, or the listed ``nodes``
    (exactly one of the three).  ``stages`` is cumulative shares of all targets (``10%,50%,100%``).
    """

    release: Release
    all: bool = False
    home: HomeName | None = None
    nodes: list[NodeName] = Field(default_factory=list, max_length=10_000)
    canary: Annotated[int, Field(ge=0, le=10_000)] = 1
    stages: Annotated[str, StringConstraints(max_length=200)] = "100%"
    max_failures: Share = 0.1
    min_sample: Annotated[int, Field(ge=1, le=10_000)] = 3
    force: bool = False
    id: Identifier | None = None
    """Given by the caller to make a retry safe; made by the service when left out."""

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> RolloutStart:
        kinds = sum((self.all, self.home is not None, bool(self.nodes)))
        if kinds != 1:
            raise ValueError("name the targets one way: all, a home, or a list of nodes")
        return self


class RolloutRef(OtaRequest):
    """``rollout_pause``, ``rollout_resume``, ``rollout_abort``: the rollout's id."""

    id: Identifier


class StatusQuery(OtaRequest):
    """``status``: one rollout (open or not), or every open one when ``id`` is left out."""

    id: Identifier | None = None


class HistoryQuery(OtaRequest):
    """``history``: a node's OTA events, newest first."""

    node: NodeName
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class LanOffer(OtaRequest):
    """``lan_offer``: the offer of a kept release tagged for one provisioned node, for an upload over the LAN
    (``nodefleet ota upload``; the node checks the tag as it checks an MQTT offer).  Answer: an :class:`Offer`."""

    node: NodeName
    release: Release
    force: bool = False


class TargetView(BaseModel):
    node: str
    stage: int
    state: OtaState
    offered: bool
    bytes: int = 0
    size: int = 0
    percent: float = 0.0
    rate: float | None = None
    """Bytes per second, as the node last reported."""
    eta: float | None = None
    """Seconds left at that rate."""
    bad: int = 0
    code: str | None = None
    reason: str | None = None
    since: float


class RolloutView(BaseModel):
    id: str
    release: str
    state: Literal["running", "paused", "halted", "aborted", "done"]
    reason: str | None = None
    stage: int
    """The last stage started (0: the canary, when there is one)."""
    stages: list[list[str]]
    canary: int
    max_failures: float
    min_sample: int
    force: bool
    size: int
    percent: float
    """Share of all the targets' bytes downloaded, in percent."""
    counts: dict[str, int]
    downloading: list[str] = Field(default_factory=list)
    """Nodes with a place in the release's stream now."""
    waiting: list[str] = Field(default_factory=list)
    """Nodes that asked for the release but wait for a place (over ``max_downloads``)."""
    targets: list[TargetView]


class HistoryRow(BaseModel):
    rollout: str | None = None
    state: str
    code: str | None = None
    reason: str | None = None
    ts: float


