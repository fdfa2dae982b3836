"""Pure parts: time-zone offsets and the embedded broker's dynamic-security commands."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from nodefleet.embedded.amqtt_access import PBKDF2_ITERATIONS, AccessList
from nodefleet.embedded.dynsec import DynamicSecurity
from services.provisioner.tz import UnknownZone, offsets

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp()


def test_offsets_of_a_zone_with_summer_time() -> None:
    berlin = offsets("Europe/Berlin", now=NOW)
    assert [(datetime.fromtimestamp(o.from_, UTC).isoformat(), o.offset) for o in berlin] == [
        ("2026-11-21T00:00:00+00:00", 3600),
        ("2027-03-28T01:00:00+00:00", 7200),
        ("2027-10-31T01:00:00+00:00", 3600),
    ]


def test_offsets_of_zones_without_changes_and_south_of_the_equator() -> None:
    assert [o.offset for o in offsets("Asia/Kolkata", now=NOW)] == [19800]
    sydney = offsets("Australia/Sydney", now=NOW)
    assert [o.offset for o in sydney] == [39600, 36000, 39600]
    with pytest.raises(UnknownZone, match="IANA"):
        offsets("Not/AZone", now=NOW)


def test_zones_resolve_on_a_machine_without_a_time_zone_database() -> None:
    """Slim containers have no /usr/share/zoneinfo: the tzdata package (a dependency) answers instead."""
    script = ("import zoneinfo; zoneinfo.reset_tzpath(to=[]); from services.provisioner.tz import offsets; "
              f"print([o.offset for o in offsets('Europe/Berlin', now={NOW})])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "[3600, 7200, 3600]", done.stderr


class FakeAccess:
    def __init__(self) -> None:
        self.clients: dict[str, tuple[str, list[str], list[str]]] = {}

    def set_client(self, username: str, password: str, *, publish, subscribe) -> None:
        self.clients[username] = (password, list(publish), list(subscribe))

    def remove_client(self, username: str) -> bool:
        return self.clients.pop(username, None) is not None


async def _run(dynsec: DynamicSecurity, *commands: dict) -> list[dict]:
    return json.loads(await dynsec.handle(json.dumps({"commands": list(commands)}).encode()))["responses"]


async def test_embedded_dynamic_security_commands() -> None:
    access = FakeAccess()
    dynsec = DynamicSecurity(set_client=access.set_client, remove_client=access.remove_client)
    acls = [{"acltype": "publishClientSend", "topic": "h/n1/#", "allow": True},
            {"acltype": "subscribePattern", "topic": "h/n1/set/#", "allow": True},
            {"acltype": "publishClientSend", "topic": "h/#", "allow": False}]
    answers = await _run(
        dynsec,
        {"command": "createRole", "rolename": "r1", "acls": acls, "correlationData": "a"},
        {"command": "createClient", "username": "n1", "password": "pw", "roles": [{"rolename": "r1"}]},
        {"command": "createClient", "username": "n1", "password": "pw"},
        {"command": "createClient", "username": "n2", "password": "pw", "roles": [{"rolename": "nope"}]},
        {"command": "frobnicate"},
    )
    assert answers[0] == {"command": "createRole", "correlationData": "a"}
    assert [a.get("error") for a in answers[1:]] == [None, "Client already exists", "Role not found", "Unknown command"]
    assert access.clients["n1"] == ("pw", ["h/n1/#"], ["h/n1/set/#"])  # a deny entry grants nothing

    await _run(dynsec, {"command": "addRoleACL", "rolename": "r1", "acltype": "subscribeLiteral", "topic": "h/n1/config",
                        "allow": True},
               {"command": "setClientPassword", "username": "n1", "password": "new"})
    assert access.clients["n1"] == ("new", ["h/n1/#"], ["h/n1/set/#", "h/n1/config"])
    answers = await _run(dynsec, {"command": "removeRoleACL", "rolename": "r1", "acltype": "publishClientSend",
                                  "topic": "h/n1/#"},
                         {"command": "addRoleACL", "rolename": "r1", "acltype": "bogus", "topic": "x"})
    assert answers[0].get("error") is None and "acltype" in answers[1]["error"]
    assert access.clients["n1"][1] == []
    answers = await _run(dynsec, {"command": "deleteClient", "username": "n1"},
                         {"command": "deleteClient", "username": "n1"}, {"command": "deleteRole", "rolename": "r1"})
    assert [a.get("error") for a in answers] == [None, "Client not found", None]
    assert access.clients == {}


async def test_embedded_dynamic_security_rejects_malformed_messages() -> None:
    dynsec = DynamicSecurity(set_client=FakeAccess().set_client, remove_client=FakeAccess().remove_client)
    for raw in (b"{", b"[]", b'{"commands": 5}', b'{"commands": [1]}'):
        answer = json.loads(await dynsec.handle(raw))
        assert "Invalid" in answer["responses"][0]["error"]
    answers = await _run(dynsec, {"command": "createClient", "username": "", "password": "x"},
                         {"command": "createClient", "username": "u" * 300, "password": "x"})
    assert all("username" in a["error"] for a in answers)


async def test_embedded_dynamic_security_state_survives_a_restart_including_older_scrypt_hashes(tmp_path) -> None:
    state = tmp_path / "dynsec.json"
    access = AccessList(allow_anonymous=False)
    dynsec = DynamicSecurity(set_client=access.set_client, remove_client=access.remove_client, access=access,
                             state_file=state)
    await _run(dynsec, {"command": "createRole", "rolename": "r1",
                        "acls": [{"acltype": "publishClientSend", "topic": "h/n1/#", "allow": True}]},
               {"command": "createClient", "username": "n1", "password": "secret-1", "roles": [{"rolename": "r1"}]})
    saved = json.loads(dynsec.snapshot())
    assert saved["clients"]["n1"]["iterations"] == PBKDF2_ITERATIONS and "secret-1" not in json.dumps(saved)
    # A client saved by an earlier version: scrypt digest, no iteration count.
    salt = b"0123456789abcdef"
    saved["clients"]["old"] = {"roles": ["r1"], "salt": salt.hex(),
                               "digest": hashlib.scrypt(b"secret-2", salt=salt, n=2**13, r=8, p=1).hex()}
    dynsec.write(json.dumps(saved))

    restored = AccessList(allow_anonymous=False)
    again = DynamicSecurity(set_client=restored.set_client, remove_client=restored.remove_client, access=restored,
                            state_file=state)
    assert again.load() == 2
    assert restored.verify("n1", "secret-1") and not restored.verify("n1", "secret-2")
    assert restored.verify("old", "secret-2") and not restored.verify("old", "secret-1")
    assert restored.access_for("n1").may_publish("h/n1/state") and not restored.access_for("n1").may_publish("h/n2/x")
