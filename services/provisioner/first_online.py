"""A node's first online: provisioned (chip bound, retained config, discovery), refused, or back after a reconnect;
and a node saying it was un-provisioned.

The common case of a burst, a pending node's first online, is one guarded
UPDATE, so of several instances exactly one provisions it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nodefleet.contracts import OFFLINE, ONLINE, SLEEPING, Config, Info, Topics
from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger

from . import discovery
from .announcer import Announcer
from .memory import NodeMemory
from .publish import Publish
from .removal import Removal
from .store import Conflict, NotFound, Store

log = get_logger(__name__)


class FirstOnline:
    def __init__(self, *, store: Store, topics: Topics, publish: Publish, errors: ErrorReporter, memory: NodeMemory,
                 announcer: Announcer, removal: Removal) -> None:
        self.store = store
        self.topics = topics
        self.publish = publish
        self.errors = errors
        self.memory = memory
        self.announcer = announcer
        self.removal = removal
        self.online_before: set[str] = set()
        """Nodes whose info came retained and were not looked at yet: online since before this instance subscribed
        (it may have been down)."""

    async def on_status(self, node: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained status
        online = payload == ONLINE.encode()
        self.memory.online[node] = online
        if payload == SLEEPING.encode():
            self.memory.asleep.add(node)
        else:
            self.memory.asleep.discard(node)
        if online and node not in self.memory.info:
            return  # a node sends its info right after: one look at the registry then (bursts of first onlines)
        await self._maybe_provisioned(node, availability_changed=True)

    async def on_info(self, node: str, payload: bytes, *, retained: bool = False) -> None:
        if not payload:
            return
        if retained:
            self.online_before.add(node)
        else:
            self.online_before.discard(node)
        try:
            self.memory.info[node] = Info.model_validate_json(payload)
        except ValidationError as exc:
            self.errors.report("bad_info", f"info of {node} is invalid: {exc.errors()[0]['msg']}",
                               topic=self.topics.info(node), node=node)
            return
        await self._maybe_provisioned(node)

    async def _maybe_provisioned(self, node: str, *, availability_changed: bool = False) -> None:
        if not availability_changed and not self.memory.online.get(node, False):
            return  # info before online: wait for the status
        self.announcer.provisioning += 1
        try:
            await self._check_first_online(node, availability_changed=availability_changed)
        finally:
            self.announcer.provisioning -= 1

    async def _check_first_online(self, node: str, *, availability_changed: bool) -> None:
        async with self.memory.lock(node):
            first_look = node not in self.memory.settled  # the first online this instance sees of it
            online_before = node in self.online_before
            self.online_before.discard(node)  # wanted for this look only: the set stays small
            online = self.memory.online.get(node, False)
            info = self.memory.info.get(node)
            if online and info is not None and node not in self.memory.settled:
                # The common case of a burst first: a pending node's first online is one UPDATE.
                try:
                    row = await self._mark_provisioned(node, info)
                except Conflict as exc:
                    await self._refuse(node, "chip_in_use", info.chip_id, f"{node} not provisioned: {exc}")
                    return
                if row is not None:
                    await self._provisioned(node, row, info)
                    return
            try:
                row = await self.store.device(node)
            except NotFound:
                return  # not ours: a node registered elsewhere, or before the registry existed
            if row["status"] == "revoked":
                return
            if row["status"] == "provisioned" and availability_changed:
                status = ONLINE if online else SLEEPING if node in self.memory.asleep else OFFLINE
                await self.publish(*discovery.homie_state(node, status), True)
            if not online or info is None:
                return
            if row["chip_id"] and row["chip_id"] != info.chip_id:
                why = (f"{node} is registered to chip {row['chip_id']} but chip {info.chip_id} came online with its "
                       f"credentials; refused: register the device with its real chip id (or a temp_ placeholder), "
                       f"or remove it with `nodefleet device remove {node}`")
                await self._refuse(node, "chip_mismatch", info.chip_id, why)
                return
            if row["status"] == "provisioned":
                self.memory.settled.add(node)
                await self.store.touch(node)
                applied = max(row["config_applied"] or 0, self.memory.applied.get(node, 0))
                if first_look and online_before and applied < row["config_version"]:
                    # Online from before this instance started and not known to run its config: the same
                    # retained config again (a copy the node has is a no-op there). An instance killed between
                    # the provisioning UPDATE and the config's publish (or a config change's) left it without.
                    # A node coming online now is provisioned by whichever instance's UPDATE wins, not here.
                    await self._publish_config(node, row)
                if not availability_changed:  # its first info of a connection
                    await self.publish(*discovery.homie_state(node, ONLINE), True)

    async def _mark_provisioned(self, node: str, info: Info) -> Any:
        """The first-online UPDATE; a chip still bound to a device its node un-provisioned moves to this one."""
        try:
            return await self.store.mark_provisioned(node, info.chip_id, list(info.caps))
        except Conflict:
            holder = await self.store.chip_holder(info.chip_id)
            if holder is None or holder == node or (await self.store.device(holder))["status"] != "unprovisioned":
                raise
        await self.removal.remove(holder, reason=f"its chip {info.chip_id} was provisioned again as {node}")
        return await self.store.mark_provisioned(node, info.chip_id, list(info.caps))

    async def _refuse(self, node: str, code: str, chip_id: str, why: str) -> None:
        """A refused online: the reason kept for the device's status, then the error event (whoever sees the
        event and asks for the status gets the reason)."""
        await self.store.set_refused(node, code, chip_id, why)
        self.errors.report(code, why, topic=self.topics.info(node), node=node)

    async def _provisioned(self, node: str, row: Any, info: Info) -> None:
        """Just provisioned: its retained config now, its discovery behind the configs of a burst."""
        self.memory.settled.add(node)
        await self._publish_config(node, row)
        self.announcer.put(discovery.messages(self.topics, node, device_name=row["device_name"],
                                                      caps=list(info.caps), fw=info.fw)
                                   + [discovery.homie_state(node, ONLINE)])
        log.info("provisioned", node=node, chip_id=info.chip_id)

    async def _publish_config(self, node: str, row: Any) -> None:
        await self.publish(self.topics.config(node), Config.model_validate(row["config"]).model_dump_json(
            by_alias=True), True)

    def capabilities(self, node: str) -> tuple[str, ...] | None:
        """What a node provisioned here declared it has (its discovery); None for nodes that are not ours."""
        info = self.memory.info.get(node)
        return tuple(info.caps) if info is not None and node in self.memory.settled else None

    async def unprovision(self, node: str, boot: int) -> None:
        """The node said it was un-provisioned at boot ``boot``: provisioned no more until its next online."""
        info = self.memory.info.get(node)
        if info is not None and info.boot_count > boot:
            log.info("unprovisioned_stale", node=node, boot=boot, now=info.boot_count)
            return  # a copy sent late, after the node came back: it is online again since
        async with self.memory.lock(node):
            if not await self.store.unprovision(node):
                return
            self.memory.settled.discard(node)
            self.memory.info.pop(node, None)  # its next online (new WiFi, same login) is a first online again
        await self.publish(*discovery.homie_state(node, OFFLINE), True)
        log.info("unprovisioned", node=node, boot=boot)
