"""The repository's shape: no symbolic links, and the shared core (nodefleet/) never imports a service."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_holds_no_symbolic_links():
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert not [line for line in tracked.splitlines() if line.startswith("120000")]
    on_disk = [p for p in ROOT.rglob("*") if p.is_symlink() and ".git" not in p.relative_to(ROOT).parts]
    assert not on_disk


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_nodefleet_imports_no_service():
    offending = {str(p.relative_to(ROOT)): sorted(n for n in imported(p) if n.split(".")[0] in ("services", "bench"))
                 for p in (ROOT / "nodefleet").rglob("*.py")}
    assert {p: n for p, n in offending.items() if n} == {}
