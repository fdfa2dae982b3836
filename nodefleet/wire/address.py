"""Where the broker is: ``mqtt://[user:password@]host[:port]`` or, over TLS,
``mqtts://[user:password@]host[:port][?ca=/path/ca.pem]``, parsed once.

Over TLS the broker's certificate and name are checked against ``ca`` (the
authority ``nodefleet up`` makes, ``<data dir>/tls/ca.pem``) or, without it,
against the system's authorities (a broker with a public certificate).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..errors import InputError


class BrokerUrlError(InputError):
    """A broker URL nodefleet cannot use."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: Path | None = None
    """Over TLS: the authority the broker's certificate is checked against (None: the system's)."""

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://[user:password@]host[:port]`` or ``mqtts://...[?ca=path]``."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise BrokerUrlError(f"unsupported broker URL scheme {parts.scheme!r} in {url!r}: use mqtt://host:port "
                                 f"or, over TLS, mqtts://host:8883?ca=/path/ca.pem")
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {url!r} names no host: use mqtt://host:port")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r} has a bad port") from exc
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"ca"})
        if unknown or (query and not tls):
            raise BrokerUrlError(f"broker URL {url!r}: the only option is ?ca=/path/ca.pem, over mqtts://")
        ca = Path(query["ca"][-1]) if query.get("ca") and query["ca"][-1] else None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca=ca,
        )

    @property
    def url(self) -> str:
        """The URL without the password, for logs and banners."""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}{self._query}"

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def _query(self) -> str:
        return f"?ca={quote(str(self.ca))}" if self.tls and self.ca is not None else ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """Over TLS, the client context that checks the broker; None over plain TCP."""
        if not self.tls:
            return None
        from ..tls import client_context  # cryptography is loaded only where TLS is used

        return client_context(self.ca)



def unreachable(address: BrokerAddress, exc: BaseException) -> str:
    """Why the broker at ``address`` could not be reached, saying what to do when its certificate was refused."""
    # aiomqtt hands the ssl error on as text only.
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        why = getattr(exc, "verify_message", None) or str(exc).rpartition("certificate verify failed: ")[2]
        return (f"the broker at {address.url} was refused: its certificate is not trusted "
                f"({why}); give the authority that signed it with ?ca=/path/ca.pem "
                f"(nodefleet up makes <data dir>/tls/ca.pem), and reach it by a name its certificate is for")
    if isinstance(exc, ssl.SSLError):
        return f"no TLS with the broker at {address.url} ({exc}): is that port its TLS listener (mqtts, 8883)?"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return f"cannot reach the broker at {address.url}: {detail}"
