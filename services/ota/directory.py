"""Who a rollout's targets are: asked of the provisioner over MQTT (``provisioner/list``), never imported."""

from __future__ import annotations

from pydantic import ValidationError

from nodefleet.contracts.ota import RolloutStart
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE, DeviceRow, ListRequest
from nodefleet.errors import InputError, RequestError
from nodefleet.fleet import Requester


class TargetError(InputError):
    """The targets of a rollout cannot be found; the message says what to do."""


class Directory:
    def __init__(self, requester: Requester, *, timeout: float) -> None:
        self.requester = requester
        self.timeout = timeout

    async def targets(self, request: RolloutStart) -> list[str]:
        """The nodes ``request`` names: provisioned ones only (a node must have its OTA key)."""
        query = ListRequest(home_id=request.home, status=None if request.nodes else "provisioned")
        try:
            rows = await self.requester.request(PROVISIONER_SERVICE, "list", query, timeout=self.timeout)
            devices = [DeviceRow.model_validate(row) for row in rows]
        except RequestError as exc:
            raise TargetError(f"cannot learn the fleet's nodes from the provisioner ({exc}); the ota service "
                              f"targets only nodes the provisioner registered") from exc
        except (ValidationError, TypeError) as exc:
            raise TargetError(f"the provisioner's node list does not fit the contract: {exc}") from exc
        if request.nodes:
            status = {d.node: d.status for d in devices}
            unknown = [n for n in request.nodes if n not in status]
            if unknown:
                raise TargetError(f"unknown node(s) {', '.join(unknown)}: not registered with the provisioner "
                                  f"(nodefleet devices lists the nodes)")
            unready = [f"{n} ({status[n]})" for n in request.nodes if status[n] != "provisioned"]
            if unready:
                raise TargetError(f"not provisioned, so without an OTA key: {', '.join(unready)}")
            return list(dict.fromkeys(request.nodes))
        nodes = [d.node for d in devices if d.status == "provisioned"]
        if not nodes:
            where = f"in home {request.home}" if request.home else "in the fleet"
            raise TargetError(f"no provisioned node {where}: nothing to roll out to")
        return nodes
