"""MQTT over TLS: the authority made on first start (and kept), both brokers' TLS listeners, a client with a wrong
authority refused with a reason. The node's side is tests/node/test_tls.py."""

from __future__ import annotations

import asyncio
import datetime
import stat
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from wire.test_publisher import batch_round_trip

from nodefleet import wire
from nodefleet.embedded.broker import EmbeddedBroker
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.errors import BrokerUnavailable
from nodefleet.tls import TlsError, TlsFiles, broker_hosts, ca_der_base64, ensure_authority

pytestmark = pytest.mark.timeout(60)

HOSTS = ["localhost", "127.0.0.1"]
ONLY_NAME = ["localhost"]


def _san(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def test_the_authority_is_made_on_first_start_and_kept(tmp_path):
    data = tmp_path / "fresh"  # no data directory yet: a first start
    files = ensure_authority(data, HOSTS)
    assert files.ca == data / "tls" / "ca.pem" and files.cert.is_file() and files.key.is_file()
    for key in (files.key, data / "tls" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((data / "tls").stat().st_mode) == 0o700
    assert {"localhost", "127.0.0.1"} <= set(_san(files.cert))
    first = {p.name: p.read_bytes() for p in (data / "tls").iterdir()}

    # A second start: nothing made again.
    ensure_authority(data, HOSTS)
    assert {p.name: p.read_bytes() for p in (data / "tls").iterdir()} == first

    # A name added (devices reach the broker as nodefleet.lan): a new broker certificate, the same authority.
    ensure_authority(data, [*HOSTS, "nodefleet.lan"])
    assert files.ca.read_bytes() == first["ca.pem"] and files.cert.read_bytes() != first["broker.pem"]
    assert "nodefleet.lan" in _san(files.cert)

    # Near its expiry (the clock set 800 days on): made again, still under the same authority.
    renewed = files.cert.read_bytes()
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=800)
    ensure_authority(data, [*HOSTS, "nodefleet.lan"], now=later)
    assert files.cert.read_bytes() != renewed and files.ca.read_bytes() == first["ca.pem"]
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.not_valid_after_utc > later + datetime.timedelta(days=700)
    assert ca_der_base64(files.ca)  # what a node is given


def test_broker_hosts_leave_out_a_wildcard_and_keep_the_order():
    hosts = broker_hosts("0.0.0.0", ["home.example"])
    assert hosts[0] == "home.example" and "0.0.0.0" not in hosts and {"localhost", "127.0.0.1"} <= set(hosts)
    assert broker_hosts("127.0.0.1")[0] == "127.0.0.1"


def test_given_files_that_do_not_fit_are_refused(tmp_path):
    one = ensure_authority(tmp_path / "one", HOSTS)
    other = ensure_authority(tmp_path / "other", HOSTS)
    with pytest.raises(TlsError, match="do not fit together"):
        TlsFiles.given(one.ca, one.cert, other.key)
    with pytest.raises(TlsError, match="does not exist"):
        TlsFiles.given(tmp_path / "missing.pem", one.cert, one.key)


async def _round_trip(address: wire.BrokerAddress) -> bytes:
    topic = f"tls-{uuid.uuid4().hex[:8]}/x"
    async with wire.Client(address, client_id=f"tls-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"over tls", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return bytes(message.payload)
    raise AssertionError("no message")


async def _check_listener(port: int, files: TlsFiles, wrong: TlsFiles) -> None:
    """``files``' broker certificate is for ``localhost`` only (ONLY_NAME)."""
    good = wire.BrokerAddress.parse(f"mqtts://localhost:{port}?ca={files.ca}")
    assert await _round_trip(good) == b"over tls"
    with pytest.raises(BrokerUnavailable, match="certificate is not trusted") as refused:
        await _round_trip(wire.BrokerAddress.parse(f"mqtts://localhost:{port}?ca={wrong.ca}"))
    assert "?ca=" in str(refused.value)  # says what to do
    # The right authority, but reached by a name (127.0.0.1) the certificate is not for.
    with pytest.raises(BrokerUnavailable, match="not trusted"):
        await _round_trip(wire.BrokerAddress.parse(f"mqtts://127.0.0.1:{port}?ca={files.ca}"))


async def test_the_embedded_broker_speaks_tls_and_a_wrong_authority_is_refused(tmp_path):
    files = ensure_authority(tmp_path / "data", ONLY_NAME)
    wrong = ensure_authority(tmp_path / "other", ONLY_NAME)
    broker = EmbeddedBroker(port=free_port(), tls_port=free_port(), tls_files=files)
    await broker.start()
    try:
        assert broker.tls_url == f"mqtts://127.0.0.1:{broker.tls_port}?ca={files.ca}"
        await _check_listener(broker.tls_port, files, wrong)
        assert await _round_trip(wire.BrokerAddress.parse(broker.url)) == b"over tls"  # the plain port as before
    finally:
        await broker.stop()


async def test_mosquitto_speaks_tls_and_a_wrong_authority_is_refused(tmp_path):
    files = ensure_authority(tmp_path / "data", ONLY_NAME)
    wrong = ensure_authority(tmp_path / "other", ONLY_NAME)
    with Mosquitto(tls=files) as broker:
        await _check_listener(broker.tls_port, files, wrong)


async def test_the_burst_publisher_speaks_tls(tmp_path):
    # The scheduler's and ota service's publish-only connection (nodefleet.wire.publisher) over TLS as well.
    files = ensure_authority(tmp_path / "data", HOSTS)
    broker = EmbeddedBroker(port=free_port(), tls_port=free_port(), tls_files=files)
    await broker.start()
    try:
        await batch_round_trip(wire.BrokerAddress.parse(broker.tls_url), wire.BrokerAddress.parse(broker.url), 300)
    finally:
        await broker.stop()
