"""Fleet requests from a command (to the telemetry service, the scheduler, ...) and checking the rows answered."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError

from .. import wire
from ..contracts.queries import TELEMETRY_SERVICE
from ..fleet import RequestError, replies_to
from ..settings import CommonSettings
from .connect import NOT_RUNNING_HINT, Connection, connect
from .errors import CliError

T = TypeVar("T")


async def request_on(connection: Connection, service: str, action: str, data: Any, *, timeout: float) -> Any:
    """One fleet request to ``service`` over an open connection; CliError that says what to do on any failure."""
    try:
        async with replies_to(connection.client, connection.topics, client_id=connection.client_id) as requester:
            return await requester.request(service, action, data, timeout=timeout)
    except RequestError as exc:
        if str(exc).startswith("no answer"):
            raise CliError(f"{exc} (start it with `nodefleet up`, or check --broker and --fleet-root)") from exc
        raise CliError(f"the {service} service answered with an error: {exc}") from exc
    except wire.WireError as exc:
        raise CliError(f"lost the broker connection ({exc}): {NOT_RUNNING_HINT}") from exc


async def service_request(settings: CommonSettings, service: str, action: str, data: Any, *, timeout: float) -> Any:
    """Connect, send one request to ``service`` and return the answer's ``data``."""
    async with connect(settings) as connection:
        return await request_on(connection, service, action, data, timeout=timeout)


async def fleet_request(settings: CommonSettings, query: Any, *, timeout: float) -> Any:
    """Send one query to the telemetry service and return the answer's ``data``."""
    return await service_request(settings, TELEMETRY_SERVICE, query.action, query, timeout=timeout)


def parse_rows(data: Any, model: type[T], what: str) -> list[T]:
    """Validate an answer's rows; a mismatch means the service speaks another contract version."""
    if not isinstance(data, list):
        raise CliError(f"unexpected answer to {what}: expected a list of rows, got {type(data).__name__}; "
                       f"are the CLI and the telemetry service the same version?")
    try:
        return [model.model_validate(row) for row in data]  # type: ignore[attr-defined]
    except ValidationError as exc:
        raise CliError(f"unexpected row in the answer to {what}: {exc.errors()[0]['msg']}; "
                       f"are the CLI and the telemetry service the same version?") from exc
