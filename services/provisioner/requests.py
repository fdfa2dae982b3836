"""The fleet requests the provisioner answers (``provisioner/<action>``): each takes its request model and
hands it to the part of the registry that owns it (the actions and models: nodefleet/contracts/requests.py)."""

from __future__ import annotations

from nodefleet.contracts.provisioning import (
    ConfigChange,
    ConfigRequest,
    DeviceRow,
    Home,
    HomeLogin,
    HomeLoginRequest,
    HomeRequest,
    ListRequest,
    NodeRequest,
    ProvisioningStatus,
    RegisterRequest,
    Registration,
    Removed,
    StatusRequest,
)
from nodefleet.fleet import TypedHandler, typed

from .registry import Registry


def handlers(registry: Registry) -> dict[str, TypedHandler]:
    """Fleet request actions -> typed handlers (``fleet.typed``: the request validated, the answer dumped)."""

    @typed
    async def register(request: RegisterRequest) -> Registration:
        return await registry.registrations.register(request)

    @typed
    async def status(request: StatusRequest) -> ProvisioningStatus:
        return await registry.registrations.status(request.provisioning_id)

    @typed
    async def home(request: HomeRequest) -> Home:
        await registry.registrations.put_home(request.home_id, request.tz)
        return Home(home_id=request.home_id, tz=request.tz)

    @typed
    async def home_login(request: HomeLoginRequest) -> HomeLogin:
        return await registry.home_logins.issue(request.home_id)

    @typed
    async def config(request: ConfigRequest) -> ConfigChange:
        config = await registry.configs.change_config(request)
        applied, rejected = (await registry.configs.wait_applied(request.node, config.version, request.wait)
                             if request.wait else (False, None))
        return ConfigChange(node=request.node, version=config.version, applied=applied, rejected=rejected,
                            config=config)

    @typed
    async def remove(request: NodeRequest) -> Removed:
        await registry.removal.remove(request.node)
        return Removed(node=request.node)

    @typed
    async def list_(request: ListRequest) -> list[DeviceRow]:
        return await registry.registrations.list(request)

    return {"register": register, "status": status, "home": home, "home_login": home_login, "config": config,
            "remove": remove, "list": list_}
