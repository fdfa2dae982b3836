"""Config changes (the next version, published retained) and what nodes did with them: applied or refused, and
waiting for either.

A change is one database transaction wrapped around the retained publish.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from nodefleet.contracts import Config, State, Topics
from nodefleet.contracts.provisioning import ConfigRequest
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger

from . import tz
from .memory import NodeMemory
from .publish import Publish
from .store import Conflict, RegistryError, Store

log = get_logger(__name__)

_READ_ONLY = {"v", "version", "tz"}


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        child = target.get(part)
        if not isinstance(child, dict):
            raise RegistryError(f"config key {key!r}: {part!r} is not a section")
        target = child
    if last not in target and path:
        raise RegistryError(f"config key {key!r} does not exist")
    target[last] = value


class Configs:
    def __init__(self, *, store: Store, topics: Topics, publish: Publish, errors: ErrorReporter,
                 memory: NodeMemory) -> None:
        self.store = store
        self.topics = topics
        self.publish = publish
        self.errors = errors
        self.memory = memory
        # Waiting config changes: version -> resolved with None once applied, or with the node's reason if refused.
        self._appliers: dict[str, list[tuple[int, asyncio.Future[str | None]]]] = {}

    async def on_state(self, node: str, payload: bytes) -> State | None:
        """Record the config version a node's state reports, and wake whoever waits for it; the state."""
        if not payload:
            return None  # a cleared retained state
        try:
            state = State.model_validate_json(payload)
        except ValidationError as exc:
            self.errors.report("bad_state", f"state of {node} is invalid: {exc.errors()[0]['msg']}",
                               topic=self.topics.state(node), node=node)
            return None
        version = state.config
        if version is None or self.memory.applied.get(node) == version:
            return state  # most states are relay changes: no registry write for them
        if await self.store.set_config_applied(node, version):
            log.info("config_applied", node=node, version=version)
        self.memory.applied[node] = version
        for wanted, future in self._appliers.get(node, []):
            if version >= wanted and not future.done():
                future.set_result(None)
        return state

    def refused(self, node: str, rejection: tuple[int, str]) -> None:
        """The node refused config version ``rejection[0]``, saying why: remember it, tell whoever waits."""
        version, why = rejection
        # Kept: the refusal may arrive before the request that published the version starts waiting.
        self.memory.rejected[node] = rejection
        for wanted, future in self._appliers.get(node, []):
            if wanted == version and not future.done():
                future.set_result(why)

    async def wait_applied(self, node: str, version: int, timeout: float) -> tuple[bool, str | None]:
        """(applied, rejected): whether the node reported config ``version`` (or a later one) within ``timeout``
        seconds, or why it refused that version."""
        if self.memory.applied.get(node, 0) >= version:
            return True, None
        rejected = self.memory.rejected.get(node)
        if rejected is not None and rejected[0] == version:
            return False, rejected[1]
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        waiting = self._appliers.setdefault(node, [])
        waiting.append((version, future))
        try:
            async with asyncio.timeout(timeout):
                rejected = await future
            return rejected is None, rejected
        except TimeoutError:
            return False, None
        finally:
            waiting.remove((version, future))
            if not waiting:
                self._appliers.pop(node, None)

    async def change_config(self, request: ConfigRequest) -> Config:
        node = request.node
        async with self.memory.lock(node), self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.device(node, conn, for_update=True)
            if row["status"] == "revoked":
                raise Conflict(f"{node} is revoked: register it again")
            body = Config.model_validate(row["config"]).model_dump(mode="json", by_alias=True)
            for key, value in request.set.items():
                if key in _READ_ONLY:
                    raise RegistryError(f"config key {key!r} is managed by the provisioner; set tz_name for the zone")
                _set_dotted(body, key, value)
            if "tz_name" in request.set:
                body["tz"] = [o.model_dump(mode="json", by_alias=True)
                              for o in tz.offsets(str(request.set["tz_name"]), now=time.time())]
            body["version"] = row["config_version"] + 1
            try:
                config = Config.model_validate(body)
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise RegistryError(f"config {'.'.join(map(str, problem['loc']))}: {problem['msg']}") from exc
            await self.store.set_config(conn, node, config.model_dump(mode="json", by_alias=True), config.version)
            if row["status"] == "provisioned":
                await self.publish(self.topics.config(node), config.model_dump_json(by_alias=True), True)
        log.info("config_changed", node=node, version=config.version, keys=sorted(request.set))
        return config
