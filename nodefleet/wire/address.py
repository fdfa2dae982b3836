"""Where the broker is: ``mqtt://[user:password@]host[:port]`` parsed once."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import InputError


class BrokerUrlError(InputError):
    """A broker URL nodefleet cannot use."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://[user:password@]host[:port]``."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp"):
            raise BrokerUrlError(f"unsupported broker URL scheme {parts.scheme!r} in {url!r}: use mqtt://host:port")
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {url!r} names no host: use mqtt://host:port")
        try:
            port = parts.port or 1883
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r} has a bad port") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        """The URL without the password, for logs and banners."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{self.host}:{self.port}"

