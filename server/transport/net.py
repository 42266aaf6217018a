"""Where a request comes from: the client's address (trusting ``X-Forwarded-For`` only from
configured proxies) and whether its ``Origin`` may open a WebSocket."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``127.0.0.1`` or ``::1`` → networks; raises ValueError on bad input."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(
    peer: str | None, forwarded_for: str | None, proxies: Sequence[Network]
) -> str | None:
    """Walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy: the first
    untrusted hop is the client. A header from an untrusted peer is ignored (anyone can
    send one)."""
    if peer is None or not proxies or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def handshake_address(environ: Mapping[str, Any], proxies: Sequence[Network]) -> str | None:
    # Engine.IO's ASGI environ has a constant REMOTE_ADDR; the ASGI scope has the peer.
    scope = environ.get("asgi.scope") or {}
    client = scope.get("client")
    peer = client[0] if client else environ.get("REMOTE_ADDR")
    return client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), proxies)


def origin_allowed(request: web.Request, allowed: Sequence[str] | str | None) -> bool:
    """The ``Origin`` check python-engineio makes for Socket.IO, for the plain WebSocket:
    ``*`` allows any; a list allows those; ``None`` allows the server's own origin only, as
    the request names it (``Host``) or a proxy forwarded it (``X-Forwarded-Proto/Host``). A
    request without ``Origin`` is not a browser's and is not checked."""
    origin = request.headers.get("Origin")
    if origin is None or allowed == "*":
        return True
    if allowed is not None:
        return origin in allowed
    return origin in own_origins(request.scheme, request.headers)


def own_origins(scheme: str, headers: Mapping[str, str]) -> set[str]:
    host = headers.get("Host")
    if not host:
        return set()
    origins = {f"{scheme}://{host}"}
    proto, forwarded_host = headers.get("X-Forwarded-Proto"), headers.get("X-Forwarded-Host")
    if proto or forwarded_host:
        proto = (proto or scheme).split(",")[0].strip()
        forwarded_host = (forwarded_host or host).split(",")[0].strip()
        origins.add(f"{proto}://{forwarded_host}")
    return origins
