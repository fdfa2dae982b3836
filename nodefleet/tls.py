"""MQTT over TLS: the certificate authority ``nodefleet up`` makes on first start, and the contexts that use it.

On first start :func:`ensure_authority` makes, in ``<data dir>/tls/``, a
certificate authority of the installation (``ca.pem``, its key ``ca.key``)
and with it the broker's certificate (``broker.pem``, ``broker.key``) for the
names nodes and clients reach the broker by. Later starts reuse them; the
broker's certificate is made again when a name is added or it is within 30
days of expiry, always under the same authority, so a node provisioned once
keeps trusting the broker. Keys are ECDSA P-256: small to send and quick for
an ESP32 to check. A user's own certificate (a public or a company authority)
takes the place of all of it (``TlsFiles.given``).

Nodes get the authority's certificate in their MQTT config (base64 DER,
:func:`ca_der_base64`: MicroPython's ``ssl`` reads DER) and verify the
broker's certificate and its name against it. Services and the ``nodefleet``
commands use ``mqtts://host:8883?ca=/path/ca.pem`` (:mod:`nodefleet.wire.address`).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import StartupError
from .logging import get_logger

log = get_logger(__name__)

TLS_DIR = "tls"
DEFAULT_TLS_PORT = 8883
CA_DAYS = 20 * 365
BROKER_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)


class TlsError(StartupError):
    """The TLS files cannot be made, read or used."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    """The certificate authority's certificate (PEM): what clients and nodes trust."""
    cert: Path
    """The broker's certificate chain (PEM)."""
    key: Path
    """The broker's private key (PEM)."""

    @classmethod
    def given(cls, ca: Path, cert: Path, key: Path) -> TlsFiles:
        """The user's own files, checked to exist and to be PEM certificates and a key that belong together."""
        files = cls(ca=ca, cert=cert, key=key)
        files.check()
        return files

    def check(self) -> None:
        for path in (self.ca, self.cert, self.key):
            if not path.is_file():
                raise TlsError(f"TLS file {path} does not exist: give an existing file, or leave the TLS options "
                               f"out to use the certificates nodefleet makes in the data directory")
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, self.key)
            x509.load_pem_x509_certificate(self.ca.read_bytes())
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise TlsError(f"the TLS files {self.cert} / {self.key} / {self.ca} do not fit together or are not "
                           f"PEM ({exc}): give the broker's certificate, its key and the authority's certificate") from exc


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodefleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Created 0600 from the start: a key is never readable by others, not even for a moment."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_authority(directory: Path, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("nodefleet broker authority")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(directory / "ca.key", _key_pem(key))
    _write_public(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _make_broker(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str],
                 now: datetime.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=BROKER_DAYS))
            .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(directory / "broker.key", _key_pem(key))
    _write_public(directory / "broker.pem", cert.public_bytes(serialization.Encoding.PEM))


def _covers(cert: x509.Certificate, hosts: list[str], now: datetime.datetime) -> bool:
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in san for name in _san(hosts))


def broker_hosts(listen_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names the broker's certificate is for: what nodes are given (``extra``), the listen address unless it
    is a wildcard, loopback and this machine's name."""
    hosts: list[str] = []
    wildcard = listen_host in ("0.0.0.0", "::", "")
    for host in [*extra, *([] if wildcard else [listen_host]), "localhost", "127.0.0.1", "::1", os.uname().nodename]:
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def ensure_authority(data_dir: Path, hosts: list[str], *, now: datetime.datetime | None = None) -> TlsFiles:
    """The installation's authority and broker certificate in ``<data_dir>/tls``: made when missing, the broker's
    made again (same authority) when it lacks one of ``hosts`` or nears expiry."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    directory = data_dir / TLS_DIR
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "broker.pem", key=directory / "broker.key")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key_path = directory / "ca.key"
        if files.ca.is_file() and ca_key_path.is_file():
            ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
                raise TlsError(f"{ca_key_path} is not the ECDSA key nodefleet made: move {directory} away to start "
                               f"a new authority (nodes provisioned before must then be provisioned again)")
        else:
            ca, ca_key = _make_authority(directory, now)
            log.info("tls_authority_created", path=str(files.ca))
        renew = True
        if files.cert.is_file() and files.key.is_file():
            current = x509.load_pem_x509_certificate(files.cert.read_bytes())
            renew = current.issuer != ca.subject or not _covers(current, hosts, now)
        if renew:
            _make_broker(directory, ca, ca_key, hosts, now)
            log.info("tls_broker_certificate_made", path=str(files.cert), hosts=hosts)
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot make or read the TLS files in {directory}: {exc}") from exc
    return files


def ca_der_base64(ca_pem: Path) -> str:
    """The authority's certificate as a node takes it: DER (what MicroPython's ``ssl`` reads), base64."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate authority {ca_pem}: {exc}") from exc
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def client_context(ca: Path | None) -> ssl.SSLContext:
    """A client's context: the broker's certificate and name checked against ``ca`` (the system's when None)."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot use the certificate authority {ca}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """``python -m nodefleet.tls DATA_DIR --host NAME ...``: what compose's ``tls-init`` runs before Mosquitto."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nodefleet.tls",
        description="Make (or keep) the certificate authority and the broker's certificate in DATA_DIR/tls, as "
                    "`nodefleet up` does on its first start. Run again with another --host to add a name.")
    parser.add_argument("data_dir", type=Path, help="where the tls directory is kept (a volume in compose)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="a name or address nodes and clients reach the broker by (repeatable; loopback and "
                             "this machine's name are always in)")
    args = parser.parse_args(argv)
    hosts = broker_hosts("0.0.0.0", args.host)
    try:
        files = ensure_authority(args.data_dir, hosts)
    except TlsError as exc:
        print(f"Error: {exc}")
        return 1
    print(f"authority {files.ca}\nbroker    {files.cert} ({', '.join(hosts)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
