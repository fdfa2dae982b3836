"""``nodefleet ota upload``: a release over the LAN, through the node's local API (docs/ota.md, "Over the LAN").

The node installs only an offer the ota service tagged with its key: from a release file (``.nfr``) this command
asks the service for that node's offer (``fleet/ota/request/lan_offer``) and makes the node upload file (``.nfu``);
a ``.nfu`` made before (``--save``, for the local page's file chooser) goes as it is.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from ..contracts.ota import OTA_SERVICE, LanOffer, Offer
from ..ota_release import UPLOAD_MAGIC, ReleaseError, encode_upload, read
from ..settings import CommonSettings
from .errors import CliError
from .options import fleet_options, node_name
from .ota import ota
from .output import console, note
from .requests import service_request
from .running import run

CHUNK = 4096
IDLE_WAIT_S = 600.0
"""How long to wait for the install: the node installs only when idle."""
WAIT_S = 60.0
"""How long to wait for each of the node's restarts (into the download mode, into the new firmware)."""

HINTS = {
    "bad_tag": "the tag does not verify with the node's key: make the file for this node (--node) from this "
               "fleet's ota service; a node provisioned again has a new key, so make it again",
    "not_newer": "the node already runs this or a newer release: add --force to install it anyway",
    "no_space": "the release does not fit the node's inactive slot: build a smaller one",
    "bad_format": "the release is for another kind of node (--target of nodefleet ota build)",
    "bad_block": "the file is damaged: make it again from the release (nodefleet ota build, then this command)",
    "bad_file": "not a node upload file: pass the .nfr release with --node, or a .nfu this command saved",
    "bad_offer": "the file's offer is damaged: make the file again",
    "bad_length": "the file is truncated or has bytes added: make it again",
    "truncated": "the connection broke off during the upload: run the command again",
    "timeout": "the node gave up waiting for the upload: run the command again",
}


class _Node:
    def __init__(self, url: str, password: str | None, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise CliError(f"--device-url {url}: use http://HOST[:PORT]")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.headers = {}
        if password:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    def request(self, method: str, body: bytes = b"", progress: Progress | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.putrequest(method, "/api/ota", skip_accept_encoding=True)
            conn.putheader("Content-Length", str(len(body)))
            for k, v in self.headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            task = progress.add_task("upload", total=len(body)) if progress is not None else None
            for i in range(0, len(body), CHUNK):
                conn.send(body[i:i + CHUNK])
                if task is not None:
                    progress.update(task, advance=len(body[i:i + CHUNK]))
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        try:
            return answer.status, json.loads(data)
        except ValueError:
            return answer.status, {"error": data.decode(errors="replace")[:200]}

    def wait(self, until: Any, what: str, seconds: float = WAIT_S) -> dict:
        deadline = time.monotonic() + seconds
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                _, last = self.request("GET")
                if until(last):
                    return last
            except (OSError, http.client.HTTPException):
                pass  # restarting
            time.sleep(0.3)
        raise CliError(f"the node did not {what} within {seconds:.0f} s (last answer {last}); check it is powered "
                       f"and on this network, then run the command again")


def _refused(answer: dict) -> CliError:
    code = answer.get("code")
    hint = HINTS.get(code or "", "see the node's log (nodefleet logs NODE)")
    return CliError(f"the node refused the upload ({code or 'error'}): {answer.get('error')}\nnext: {hint}")


def _upload_file(path: Path, node: str | None, force: bool, settings: CommonSettings) -> bytes:
    data = path.read_bytes()
    if data[:4] == UPLOAD_MAGIC:
        return data
    try:
        release = read(path)
    except ReleaseError as exc:
        raise CliError(f"{path}: {exc}") from None
    if node is None:
        raise CliError("a release file needs --node NODE: the ota service tags the upload for that node's key")
    answer = run(service_request(settings, OTA_SERVICE, "lan_offer",
                                 LanOffer(node=node, release=release.manifest.version, force=force).model_dump(),
                                 timeout=10))
    try:
        return encode_upload(release, Offer.model_validate(answer))
    except ReleaseError as exc:
        raise CliError(f"{exc}: the ota service keeps another {release.manifest.version}; hand it this file "
                       f"(nodefleet ota release) or upload the one it keeps") from None


@ota.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device-url", metavar="URL", help="The node's local page, e.g. http://192.168.1.40")
@click.option("--node", callback=node_name, metavar="NODE", help="The node's name (for a .nfr release file)")
@click.option("--force", is_flag=True, help="Install even a release older than (or the same as) the node's")
@click.option("--password", envvar="NODEFLEET_WEB_PASSWORD", metavar="PW", help="The node's web password, if set")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.nfu",
              help="Also write the node upload file (for the local page's file chooser)")
@fleet_options
def upload_command(file: Path, device_url: str | None, node: str | None, force: bool, password: str | None,
                   save: Path | None, settings: CommonSettings) -> None:
    """Update one node over the LAN through its local API.

    \b
    Examples:
      nodefleet ota upload nodefleet-1.4.0.nfr --node kitchen --device-url http://192.168.1.40
      nodefleet ota upload nodefleet-1.4.0.nfr --node kitchen --save kitchen-1.4.0.nfu
      nodefleet ota upload kitchen-1.4.0.nfu --device-url http://192.168.1.40

    The node restarts into its download mode, takes the file, checks the tag
    and every block, installs when idle, and confirms the new firmware after
    its trial boot; any refusal leaves it running what it ran.
    """
    body = _upload_file(file, node, force, settings)
    if save is not None:
        save.write_bytes(body)
        note(f"saved {save}: choose it on the node's page (Firmware, Upload), or pass it to this command")
    if device_url is None:
        if save is None:
            raise CliError("say where the node is: --device-url http://HOST (or --save a file for its page)")
        return
    dev = _Node(device_url, password)
    try:
        status, answer = dev.request("POST")
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"cannot reach the node at {device_url}: {exc}; check the address and that you are on its "
                       f"network") from None
    if status == 401:
        raise CliError("the node has a web password: pass --password (or set NODEFLEET_WEB_PASSWORD)")
    if status != 202:
        raise _refused(answer)
    before = dev.wait(lambda a: a.get("mode") == "download", "enter its download mode")
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console(), transient=True) as bar:
        try:
            status, answer = dev.request("POST", body, bar)
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(f"the upload broke off: {exc}; the node goes back to normal mode, run the command "
                           f"again") from None
    if status != 200:
        raise _refused(answer)
    console().print(f"uploaded {len(body)} bytes: release {answer.get('release')} {answer.get('state')}"
                    + (f"; {answer['next']}" if answer.get("next") else ""))
    # Installed when idle (relay off, no rule due soon), then the trial boot: the relay on holds it back.
    done = dev.wait(lambda a: a.get("mode") == "normal" and a.get("ota") != "trial", "install, restart and confirm",
                    IDLE_WAIT_S)
    if done.get("ota") == "rolled_back":
        raise CliError(f"the new firmware did not pass its trial and the node rolled back to {done.get('fw')}; "
                       f"nodefleet logs NODE says why")
    if done.get("state") == "failed":
        raise _refused(done)
    console().print(f"updated: the node runs {done.get('fw')} (was {before.get('fw')})")
