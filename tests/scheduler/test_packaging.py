"""The scheduler carries the firmware's rule engine, so an install without the source tree (a wheel) can run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import services.scheduler
from services.scheduler import rulebook

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(services.scheduler.__file__).parent


def test_the_packaged_engine_is_the_firmware_file():
    assert rulebook.RULES_PATH.parent.parent == PACKAGE
    assert rulebook.RULES_PATH.resolve() == (ROOT / "firmware" / "rules.py").resolve()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = rulebook.RULES_PATH.relative_to(PACKAGE).as_posix()
    assert relative in data["services.scheduler"], "the wheel would not carry the rule engine"


def test_runs_from_a_copy_without_the_source_tree(tmp_path):
    # What a wheel installs: the package with the link resolved to a plain file, no firmware/ beside it.
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "services" / "scheduler", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "services" / "__init__.py").touch()
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from services.scheduler import rulebook;"
        "assert rulebook.RULES_PATH.resolve().is_relative_to(sys.argv[1]), rulebook.RULES_PATH.resolve();"
        "rules = [{'id': 'water', 'at': '06:00', 'duration': 1800}];"
        "print(rulebook.next_start(rules, [(0, 3600)], 0))"
    )
    # -S: no site-packages, so the development install of the repository cannot be picked up.
    done = subprocess.run([sys.executable, "-S", "-c", probe, str(site)], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(rulebook.next_start([{"id": "water", "at": "06:00", "duration": 1800}],
                                                          [(0, 3600)], 0))
