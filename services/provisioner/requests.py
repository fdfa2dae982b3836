"""The fleet requests the provisioner answers (``provisioner/<action>``): each validates its request model and
hands it to the part of the registry that owns it."""

from __future__ import annotations

from typing import Any

from nodefleet.contracts.provisioning import (
    ConfigChange,
    ConfigRequest,
    HomeRequest,
    ListRequest,
    NodeRequest,
    RegisterRequest,
    StatusRequest,
)
from nodefleet.fleet import Handler

from .registry import Registry


def handlers(registry: Registry) -> dict[str, Handler]:
    """Fleet request actions -> handlers taking the request's ``data``."""

    async def register(data: dict[str, Any]) -> Any:
        return (await registry.registrations.register(RegisterRequest.model_validate(data))).model_dump(mode="json")

    async def status(data: dict[str, Any]) -> Any:
        request = StatusRequest.model_validate(data)
        return (await registry.registrations.status(request.provisioning_id)).model_dump(mode="json")

    async def home(data: dict[str, Any]) -> Any:
        request = HomeRequest.model_validate(data)
        await registry.registrations.put_home(request.home_id, request.tz)
        return {"home_id": request.home_id, "tz": request.tz}

    async def config(data: dict[str, Any]) -> Any:
        request = ConfigRequest.model_validate(data)
        config = await registry.configs.change_config(request)
        applied, rejected = (await registry.configs.wait_applied(request.node, config.version, request.wait)
                             if request.wait else (False, None))
        return ConfigChange(node=request.node, version=config.version, applied=applied, rejected=rejected,
                            config=config.model_dump(mode="json", by_alias=True)).model_dump(mode="json")

    async def remove(data: dict[str, Any]) -> Any:
        await registry.removal.remove(NodeRequest.model_validate(data).node)
        return {"node": data["node"], "status": "revoked"}

    async def list_(data: dict[str, Any]) -> Any:
        request = ListRequest.model_validate(data)
        return [row.model_dump(mode="json") for row in await registry.registrations.list(request)]

    return {"register": register, "status": status, "home": home, "config": config, "remove": remove,
            "list": list_}
