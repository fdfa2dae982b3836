"""A wheel carries the node firmware: its rule engine and checks (firmware/rules.py, firmware/rulecheck.py) to the
contracts and the scheduler, the whole of it to the simulated nodes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from services.scheduler import rulebook

ROOT = Path(__file__).resolve().parents[2]
BUILT = ("pyproject.toml", "README.md", "nodefleet", "services", "bench", "firmware")


def test_one_engine_for_node_and_backend():
    assert Path(rulebook.engine.__file__).resolve() == ROOT / "firmware" / "rules.py"


def test_runs_from_the_wheel_without_the_source_tree(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILT:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
                           str(source)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("nodefleet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")  # a pure wheel installs as its files
    assert {"firmware/rules.py", "firmware/rulecheck.py"} <= set(names)
    # The whole node firmware rides along: `nodefleet sim` and `up --demo` run it from the wheel.
    assert {"firmware/main.py", "firmware/normal.py", "firmware/hal/sim.py", "firmware/hal/esp32.py"} <= set(names)
    site = tmp_path / "site"
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path;"
        "import firmware.rules, firmware.rulecheck, nodefleet.contracts.scheduling as contract;"
        "from services.scheduler import rulebook;"
        "assert all(Path(m.__file__).is_relative_to(sys.argv[1]) for m in (firmware.rules, firmware.rulecheck, contract, rulebook));"
        "contract.validate_schedule({'v': 1, 'version': 1, 'rules': [{'id': 'water', 'at': '06:00', 'duration': 1800}]});"
        "from nodefleet import sim; assert sim.FIRMWARE_DIR.is_relative_to(sys.argv[1]);"
        "assert (sim.deployed() / 'normal.mpy').is_file();"
        "print(rulebook.next_start([{'id': 'water', 'at': '06:00', 'duration': 1800}], [(0, 3600)], 0))"
    )
    # Run outside the source tree, so neither the repository nor its development install can be picked up.
    done = subprocess.run([sys.executable, "-c", probe, str(site)], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(rulebook.next_start([{"id": "water", "at": "06:00", "duration": 1800}],
                                                          [(0, 3600)], 0))
