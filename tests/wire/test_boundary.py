"""The wire package is the only door to aiomqtt: no other module imports it or catches its errors,
and a refused login comes out as our own error."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import broker_security
import pytest

from nodefleet.wire import BrokerAddress, BrokerRefused, Client

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "nodefleet" / "wire"
# Tests and benchmarks may use aiomqtt as a client of their own; the product may not.
CHECKED = ("nodefleet", "services", "scripts")
AIOMQTT_ERRORS = {"MqttError", "MqttCodeError", "MqttConnectError", "MqttReentrantError"}


def _sources() -> list[Path]:
    files = []
    for top in CHECKED:
        for path in (ROOT / top).rglob("*.py"):
            # services/scheduler/firmware is the node's engine (MicroPython), not the backend.
            if WIRE in path.parents or "firmware" in path.relative_to(ROOT).parts:
                continue
            files.append(path)
    return files


def _aiomqtt_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "aiomqtt"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiomqtt":
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in AIOMQTT_ERRORS:
            found.append(f"...{node.attr}")
        elif isinstance(node, ast.Name) and node.id in AIOMQTT_ERRORS:
            found.append(node.id)
        elif isinstance(node, ast.Constant) and node.value == "aiomqtt":
            found.append('"aiomqtt" (a dynamic import?)')
    where = path.relative_to(ROOT) if ROOT in path.parents else path
    return [f"{where}:{use}" for use in found]


def test_no_module_outside_the_wire_package_imports_aiomqtt_or_catches_its_errors():
    sources = _sources()
    assert len(sources) > 50  # the scan sees the tree
    offenders = [use for path in sources for use in _aiomqtt_uses(path)]
    assert offenders == []


def test_the_scan_would_see_an_import(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("import aiomqtt\ntry:\n    pass\nexcept aiomqtt.MqttError:\n    pass\n")
    assert len(_aiomqtt_uses(sample)) == 2


async def test_a_refused_login_is_our_broker_refused(secured_mosquitto):
    wrong = BrokerAddress(secured_mosquitto.host, secured_mosquitto.port, broker_security.SERVICE[0], "wrong")
    with pytest.raises(BrokerRefused) as caught:
        async with Client(wrong, client_id=f"x-{uuid.uuid4().hex[:8]}"):
            pass
    assert caught.value.bad_login and caught.value.code in (4, 5)
    right = BrokerAddress(secured_mosquitto.host, secured_mosquitto.port, *broker_security.SERVICE)
    async with Client(right, client_id=f"y-{uuid.uuid4().hex[:8]}") as mqtt:
        await mqtt.publish("secure/any", b"x", qos=1)
