"""``nodefleet ota build``: a release from the real firmware tree, checked against the sources; damaged files refused."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodefleet.cli import main
from nodefleet.contracts import ota
from nodefleet.ota_release import (
    MPY_ARCH,
    ReleaseError,
    build,
    compile_modules,
    decode,
    encode,
    read,
    sources,
    write,
)
from nodefleet.sim import FIRMWARE_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release():
    return build(FIRMWARE_DIR, version="1.4.0")


@pytest.fixture
def release_file(tmp_path, release) -> Path:
    path = tmp_path / "r.nfr"
    write(release, path)
    return path


def test_manifest_matches_the_firmware_modules(release):
    m = release.manifest
    expected = [p for p in sources(FIRMWARE_DIR) if p != "main.py"]
    assert [f.path for f in m.files] == [p.removesuffix(".py") + ".mpy" for p in expected]
    assert "main.mpy" not in {f.path for f in m.files} and "hal/sim.mpy" not in {f.path for f in m.files}
    assert {"normal.mpy", "ota.mpy", "otastore.mpy", "hal/esp32.mpy", "hal/esp32slot.mpy"} <= {f.path for f in m.files}
    # Each file in the image is what mpy-cross makes of its source, compiled on its own here.
    for (path, data), f in zip(compile_modules(FIRMWARE_DIR, ["logic.py", "hal/esp32slot.py"]),
                               [m.files[[x.path for x in m.files].index(p)] for p in ("logic.mpy", "hal/esp32slot.mpy")]):
        assert path == f.path and release.file(f.path) == data and hashlib.sha256(data).hexdigest() == f.sha256
        assert data[:2] == b"M\x06"  # an .mpy of version 6
    assert m.size == len(release.image) and m.sha256 == hashlib.sha256(release.image).hexdigest()
    assert m.blocks == [hashlib.sha256(release.image[i:i + 4096]).hexdigest() for i in range(0, m.size, 4096)]
    assert m.mpy_arch == MPY_ARCH and m.format == "nfi1"
    # The image's own header (what the node unpacks by) lists the same files at the same places.
    (length,) = struct.unpack_from(">I", release.image, 4)
    header = json.loads(release.image[8:8 + length])
    assert release.image[:4] == b"NFI1" and header["version"] == "1.4.0"
    assert header["files"] == [[f.path, f.offset, f.size] for f in m.files]
    assert m.files[0].offset == 8 + length and all(a.offset + a.size == b.offset for a, b in zip(m.files, m.files[1:]))


def test_unix_target_carries_the_sim_hal(release):
    unix = build(FIRMWARE_DIR, version="1.4.0", target="unix").manifest
    paths = {f.path for f in unix.files}
    assert {"hal/sim.mpy", "hal/simslot.mpy", "hal/simctl.mpy"} <= paths and "hal/esp32.mpy" not in paths


def test_same_sources_same_bytes(release, release_file):
    again = build(FIRMWARE_DIR, version="1.4.0")
    assert encode(again) == release_file.read_bytes()
    assert read(release_file) == release


@pytest.mark.parametrize("block_size", [1024, 8192])
def test_block_size(block_size):
    m = build(FIRMWARE_DIR, version="2.0.0-rc.1", block_size=block_size).manifest
    assert m.block_size == block_size and len(m.blocks) == -(-m.size // block_size)


def _damaged(data: bytes, how: str) -> bytes:
    (length,) = struct.unpack_from(">I", data, 4)
    image_at = 8 + length
    if how == "image byte":
        i = image_at + 5000
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    if how == "truncated":
        return data[:-100]
    if how == "truncated manifest":
        return data[:200]
    if how == "trailing bytes":
        return data + b"\0"
    if how == "magic":
        return b"XXXX" + data[4:]
    manifest = json.loads(data[8:image_at])
    if how == "manifest hash":
        manifest["blocks"][0] = "0" * 64
    elif how == "manifest size":
        manifest["size"] += 8192  # no longer the listed number of blocks
    elif how == "file hash":
        manifest["files"][3]["sha256"] = "1" * 64
    elif how == "file moved":
        manifest["files"][0]["offset"] += 1
        manifest["files"][0]["size"] -= 1
    raw = ota.canonical_json(manifest)
    return b"NFR1" + struct.pack(">I", len(raw)) + raw + data[image_at:]


@pytest.mark.parametrize(("how", "message"), [
    ("image byte", "block 1 (bytes 4096-8191) does not match its sha256"),
    ("truncated", "truncated release file: the image has"),
    ("truncated manifest", "truncated release file: its manifest should have"),
    ("trailing bytes", "1 bytes follow the"),
    ("magic", "not a nodefleet release file"),
    ("manifest hash", "block 0 (bytes 0-4095) does not match"),
    ("manifest size", "the manifest is not valid"),
    ("file hash", "does not match its sha256 in the manifest"),
    ("file moved", "does not match its sha256 in the manifest"),
])
def test_damaged_release_file_is_refused(release_file, how, message):
    bad = release_file.with_name("bad.nfr")
    bad.write_bytes(_damaged(release_file.read_bytes(), how))
    with pytest.raises(ReleaseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read(bad)
    result = CliRunner().invoke(main, ["ota", "inspect", str(bad)])
    assert result.exit_code == 1 and message in result.output, result.output


def test_cli_builds_and_inspects(tmp_path):
    # A subprocess from the worktree: the command as a user runs it.
    out = tmp_path / "fw.nfr"
    done = subprocess.run([sys.executable, "-m", "nodefleet", "ota", "build", str(FIRMWARE_DIR), "--version", "1.4.0",
                           "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "release 1.4.0:" in done.stdout and f"written to {out}" in done.stderr
    assert decode(out.read_bytes()).manifest.version == "1.4.0"
    shown = CliRunner().invoke(main, ["ota", "inspect", str(out), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == "1.4.0"
    for args, why in ((["--version", "1.4"], "use a version such as 1.4.0"), (["--version", "1.4.0", "--block-size", "1000"],
                      "multiple of 1024"), (["--version", "1.4.0", str(tmp_path)], "is not a firmware directory")):
        result = CliRunner().invoke(main, ["ota", "build", *args, "-o", str(tmp_path / "x.nfr")])
        assert result.exit_code != 0 and why in result.output, result.output
    assert "mpy-cross" in CliRunner().invoke(main, ["ota", "--help"]).output


def test_a_module_that_does_not_compile_is_named(tmp_path):
    fw = tmp_path / "fw"
    (fw / "hal").mkdir(parents=True)
    (fw / "main.py").write_text("import app\n")
    (fw / "hal" / "__init__.py").write_text("")
    (fw / "app.py").write_text("def broken(:\n")
    with pytest.raises(ReleaseError, match="app.py does not compile"):
        build(fw, version="1.0.0")
