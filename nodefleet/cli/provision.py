"""``nodefleet provision``: the phone app's provisioning flow, from the command line.

1. register the device with the backend (over MQTT, or the provisioner's HTTP edge with --backend-url);
2. on the node's access point (--device-url): GET /api/info, POST /api/wifi, POST /api/mqtt, POST /api/restart;
3. poll the registration's status until the node came online.

Each failure names its step and what to do next.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import click
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..contracts.provisioning import HTTP_REGISTER_PATH, HTTP_STATUS_PATH
from ..settings import CommonSettings
from .device import provisioner_request
from .errors import CliError
from .group import main
from .options import fleet_options
from .running import run

STEPS = ("register", "device info", "wifi", "mqtt", "restart", "online")
HTTP_TIMEOUT = 5.0


class StepError(CliError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step '{step}' failed: {message}")


def _http(url: str, method: str = "GET", body: Any = None, *, timeout: float = HTTP_TIMEOUT) -> Any:
    """One JSON request; raises urllib's errors (the caller names the step)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _http_error(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            return f"HTTP {exc.code}: {json.loads(exc.read()).get('error')}"
        except (ValueError, AttributeError):
            return f"HTTP {exc.code}"
    return str(getattr(exc, "reason", None) or exc)


class Flow:
    def __init__(self, settings: CommonSettings, *, backend_url: str | None, device_url: str, timeout: float) -> None:
        self.settings = settings
        self.backend_url = backend_url.rstrip("/") if backend_url else None
        self.device_url = device_url.rstrip("/")
        self.timeout = timeout

    async def register(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.backend_url is None:
            try:
                return await provisioner_request(self.settings, "register", data, timeout=10.0)
            except CliError as exc:
                raise StepError("register", f"{exc.message}") from exc
        try:
            return await asyncio.to_thread(_http, self.backend_url + HTTP_REGISTER_PATH, "POST", data)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise StepError("register", f"backend at {self.backend_url} unreachable or refused ({_http_error(exc)}); "
                            "check --backend-url and that the provisioner runs") from exc

    async def status(self, provisioning_id: str) -> dict[str, Any] | None:
        """The registration's status, or None while the backend cannot be reached (the host may be switching networks)."""
        try:
            if self.backend_url is None:
                return await provisioner_request(self.settings, "status", {"provisioning_id": provisioning_id},
                                                 timeout=3.0)
            return await asyncio.to_thread(_http, self.backend_url + HTTP_STATUS_PATH + provisioning_id)
        except (CliError, urllib.error.URLError, OSError, ValueError):
            return None

    async def device(self, step: str, method: str, path: str, body: Any = None) -> Any:
        try:
            return await asyncio.to_thread(_http, self.device_url + path, method, body)
        except urllib.error.HTTPError as exc:
            raise StepError(step, f"the device refused {method} {path} ({_http_error(exc)}); check the values and retry") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise StepError(step, f"device unreachable at {self.device_url} ({_http_error(exc)}): connect this "
                            "computer to the device's nodefleet-XXXX WiFi network (XXXX: the last 4 characters of its chip id; "
                            "hold its button 5 s to reopen it), "
                            "then retry") from exc


async def provision_flow(flow: Flow, *, name: str, home: str, ssid: str, wifi_password: str,
                         progress: Progress) -> dict[str, Any]:
    task = progress.add_task("register", total=len(STEPS))

    def step(label: str) -> None:
        progress.update(task, description=label, advance=1)

    registration = await flow.register({"home_id": home, "device_name": name})
    mqtt_config = registration["mqtt_config"]
    step("device info")
    info = await flow.device("device info", "GET", "/api/info")
    if not isinstance(info, dict) or info.get("mode") != "provisioning":
        raise StepError("device info", "the device is not in provisioning mode: hold its button 5 s, then retry")
    step("wifi")
    await flow.device("wifi", "POST", "/api/wifi", {"ssid": ssid, "password": wifi_password})
    step("mqtt")
    mqtt = {
        "broker": mqtt_config["broker_host"], "port": mqtt_config["broker_port"],
        "topic_prefix": mqtt_config["topic_prefix"], "node_name": mqtt_config["node_name"],
        "username": mqtt_config["username"], "password": mqtt_config["password"],
    }
    if mqtt_config.get("ota_key"):  # absent when the backend has no OTA master key
        mqtt["ota_key"] = mqtt_config["ota_key"]
    if mqtt_config.get("broker_ca"):  # the backend hands its broker's authority: the node speaks TLS to it
        mqtt["ca"] = mqtt_config["broker_ca"]
    await flow.device("mqtt", "POST", "/api/mqtt", mqtt)
    step("restart")
    await flow.device("restart", "POST", "/api/restart")
    step(f"waiting for {mqtt_config['node_name']} to come online")
    deadline = time.monotonic() + flow.timeout
    while time.monotonic() < deadline:
        status = await flow.status(registration["provisioning_id"])
        if status and status.get("is_provisioned"):
            step("online")
            return {"node": mqtt_config["node_name"], "provisioning_id": registration["provisioning_id"],
                    "chip_id": info.get("chip_id"), "connected_at": status.get("connected_at")}
        if status and status.get("status") in ("chip_mismatch", "chip_in_use"):
            raise StepError("online", f"the device came online but was refused ({status['status']}): "
                            f"{status.get('error')}")
        await asyncio.sleep(0.5)
    raise StepError("online", f"{mqtt_config['node_name']} did not come online within {flow.timeout:g} s: check the "
                    f"WiFi name and password and that the broker {mqtt_config['broker_host']}:"
                    f"{mqtt_config['broker_port']} is reachable from the device's network; the device reopens its "
                    "access point after a failure, so retry `nodefleet provision`")


@main.command()
@fleet_options
@click.option("--name", "device_name", required=True, help="Device name shown to people, e.g. 'RO purifier'")
@click.option("--home", default="home", show_default=True, help="Home the device belongs to")
@click.option("--ssid", required=True, help="WiFi network the device joins")
@click.option("--wifi-password", default="", help="Its password (empty for an open network; the flag alone prompts)",
              prompt=True,
              hide_input=True, prompt_required=False)
@click.option("--device-url", default="http://192.168.4.1", show_default=True,
              help="The device's access-point API (join its nodefleet-XXXX network first; XXXX ends its chip id)")
@click.option("--backend-url", metavar="URL",
              help="Register through the provisioner's HTTP edge (http://host:8080) instead of MQTT")
@click.option("--timeout", type=click.FloatRange(min=1), default=90.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the device to come online")
def provision(settings: CommonSettings, device_name: str, home: str, ssid: str, wifi_password: str,
              device_url: str, backend_url: str | None, timeout: float) -> None:
    """Provision a device as the phone app does: register it, configure it over its access point, wait until online."""
    flow = Flow(settings, backend_url=backend_url, device_url=device_url, timeout=timeout)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        result = run(provision_flow(flow, name=device_name, home=home, ssid=ssid, wifi_password=wifi_password,
                                    progress=progress))
    click.echo(f"{result['node']} is online (chip {result['chip_id']}, provisioning id {result['provisioning_id']})")
