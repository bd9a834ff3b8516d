"""Where the MictlanX routers are: ``MICTLANX_URI`` / ``MICTLANX_ROUTERS`` parsed into endpoints.

Pure parsers, no I/O (docs/storage.md, section 1). Differences from the reference client: a URI
without ``protocol=`` uses ``MICTLANX_PROTOCOL`` (the reference defaults to https) and the port is kept
for https (the reference drops it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

from worker.settings import Settings

SUPPORTED_API_VERSION = 4


@dataclass(frozen=True)
class RouterEndpoint:
    """One router: ``protocol://host:port`` (the port is kept for https too, unlike the reference)."""

    router_id: str
    host: str
    port: int
    protocol: str = "http"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{where}: port must be 1..65535, got {text!r}")
    return int(text)


def _protocol(text: str, where: str) -> str:
    if text not in ("http", "https"):
        raise ValueError(f"{where}: protocol must be http or https, got {text!r}")
    return text


def parse_mictlanx_uri(uri: str, *, default_protocol: str = "http") -> list[RouterEndpoint]:
    """Parse ``mictlanx://<id>@<host>:<port>[,<id>@<host>:<port>...][/][?protocol=http&api_version=4]``.

    Unknown query parameters (``http2``) are ignored; ``api_version`` other than 4 is an error (the
    router only serves ``/api/v4``). Without ``protocol=`` the ``default_protocol`` applies (the
    reference client defaults to https and then drops the port; we keep the port).
    """
    prefix = "mictlanx://"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise ValueError(f"MICTLANX_URI must start with {prefix}, got {uri!r}")
    routers_part, _, query = uri[len(prefix) :].partition("?")
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    protocol = _protocol(params.get("protocol", default_protocol), "MICTLANX_URI")
    api_version = params.get("api_version", str(SUPPORTED_API_VERSION))
    if api_version != str(SUPPORTED_API_VERSION):
        raise ValueError(f"MICTLANX_URI: only api_version=4 is served by the router, got {api_version!r}")
    endpoints = []
    for index, item in enumerate(part.strip().strip("/") for part in routers_part.split(",")):
        if not item:
            continue
        router_id, at, address = item.rpartition("@")
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"MICTLANX_URI: expected <id>@<host>:<port>, got {item!r}")
        host = host.strip("[]")
        endpoints.append(
            RouterEndpoint(
                router_id if at else f"router-{index}", host, _port(port, "MICTLANX_URI"), protocol
            )
        )
    if not endpoints:
        raise ValueError("MICTLANX_URI names no router")
    return endpoints


def parse_mictlanx_routers(routers: str | Iterable[str], *, protocol: str = "http") -> list[RouterEndpoint]:
    """Parse ``MICTLANX_ROUTERS`` entries ``id:host:port`` (a comma-separated string or a list)."""
    items = routers.split(",") if isinstance(routers, str) else list(routers)
    endpoints = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ValueError(f"MICTLANX_ROUTERS: expected id:host:port, got {item!r}")
        endpoints.append(
            RouterEndpoint(
                parts[0],
                parts[1],
                _port(parts[2], "MICTLANX_ROUTERS"),
                _protocol(protocol, "MICTLANX_PROTOCOL"),
            )
        )
    if not endpoints:
        raise ValueError("MICTLANX_ROUTERS names no router")
    return endpoints


def router_endpoints(settings: Settings) -> list[RouterEndpoint]:
    """The routers to use: ``MICTLANX_URI`` when set, else ``MICTLANX_ROUTERS``."""
    if settings.mictlanx_api_version != SUPPORTED_API_VERSION:
        raise ValueError(f"MICTLANX_API_VERSION: only 4 is supported, got {settings.mictlanx_api_version}")
    if settings.mictlanx_uri:
        return parse_mictlanx_uri(settings.mictlanx_uri, default_protocol=settings.mictlanx_protocol)
    return parse_mictlanx_routers(settings.mictlanx_routers, protocol=settings.mictlanx_protocol)


__all__ = [
    "SUPPORTED_API_VERSION",
    "RouterEndpoint",
    "parse_mictlanx_routers",
    "parse_mictlanx_uri",
    "router_endpoints",
]
