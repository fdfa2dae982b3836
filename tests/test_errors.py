"""One exception tree: every exception class of nodefleet and its services derives from NodefleetError,
and the tree drawn in nodefleet/errors.py names each of them (and nothing else)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from nodefleet import errors
from nodefleet.errors import NodefleetError

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    names = []
    for top in ("nodefleet", "services"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "firmware" in parts or parts[-1] == "__main__":
                continue  # the node's own engine (MicroPython); entry points run when imported
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{value.__qualname__}"] = value
    return found


def _drawn() -> set[str]:
    tree = errors.__doc__.split("::", 1)[1].split("\n\n", 2)[1]
    return {re.search(r"[─└├]+ (\w+)", line).group(1) for line in tree.splitlines() if "──" in line} | {"NodefleetError"}


def test_every_exception_derives_from_the_root_and_is_drawn_in_the_tree():
    classes = _exception_classes()
    assert len(classes) >= 30
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, NodefleetError))
    assert outside == []
    assert sorted({cls.__name__ for cls in classes.values()} - _drawn()) == []  # defined but not drawn
    assert sorted(_drawn() - {cls.__name__ for cls in classes.values()}) == []  # drawn but gone


def test_near_duplicates_are_folded_and_names_are_unique():
    classes = _exception_classes()
    names = [cls.__name__ for cls in classes.values()]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    assert not {"ConnectionRefused", "ConnectRefused", "StoreUnavailable"} & set(names)


def test_branches_keep_what_callers_rely_on():
    # A fleet request answers a ValueError or LookupError as bad input; these still are.
    from services.provisioner.store import Conflict, NotFound

    from nodefleet.contracts.scheduling import BadSchedule
    from nodefleet.contracts.topics import TopicError
    assert all(issubclass(cls, (errors.InputError, ValueError)) for cls in (TopicError, BadSchedule, Conflict))
    assert issubclass(NotFound, LookupError) and issubclass(NotFound, errors.InputError)
    # Exit codes: 2 when asked, 1 by default, 0 for a stop requested while starting.
    from nodefleet.up.errors import StartupInterrupted
    assert errors.StartupError("x").exit_code == 1 and errors.StartupError("x", exit_code=2).exit_code == 2
    assert StartupInterrupted().exit_code == 0
    refused = errors.BrokerRefused.connack(134)  # paho's MQTT 5 number for 3.1.1's 4
    assert refused.code == 4 and refused.bad_login and "bad user name or password" in str(refused)
