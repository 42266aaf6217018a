"""The deployment's TLS path: the app behind the real nginx with deploy/nginx.conf and a
self-signed certificate made with openssl, reached over https:// and wss:// by the official
Node client and a ``websockets`` client, both verifying the certificate."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import websockets

from tests.conftest import JWT_SECRET, StartServer, make_token
from tests.helpers import run_node
from tests.servers import Nginx

StartNginx = Callable[[str], Nginx]


@pytest.fixture
def tls_nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """Start nginx with TLS in front of one upstream (host:port)."""
    proxies: list[Nginx] = []

    def start(upstream: str) -> Nginx:
        proxy = Nginx(upstreams=[upstream], workdir=tmp_path / "nginx", tls=True).start()
        assert isinstance(proxy, Nginx)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def trusting(certificate: Path) -> ssl.SSLContext:
    """Verifies certificates and host names as usual, trusting only the test certificate."""
    return ssl.create_default_context(cafile=str(certificate))


async def test_wss_through_nginx_with_the_official_client_and_websockets(
    start_server: StartServer, tls_nginx: StartNginx
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    proxy = tls_nginx(server.url.removeprefix("http://"))
    assert proxy.url.startswith("https://")
    token = make_token("patient-tls")

    for transports in ("websocket", "polling,websocket"):
        seen = await run_node("tls.mjs", proxy.url, token, transports, str(proxy.certificate))
        assert seen["connectErrors"] == []
        assert seen["join"]["ok"] and seen["send"]["ok"], seen
        assert seen["transport"] == "websocket" and "over TLS?" in seen["reply"]

    # The plain WebSocket endpoint over wss://, certificate verified.
    url = proxy.url.replace("https://", "wss://") + f"/ws/chat?token={token}"
    async with websockets.connect(url, ssl=trusting(proxy.certificate)) as ws:
        connected = json.loads(await ws.recv())
        assert connected["event"] == "connected"
        assert connected["data"]["userId"] == "patient-tls"
        await ws.send(
            json.dumps(
                {"event": "joinConsultation", "id": 1, "data": {"consultationId": "tls-raw"}}
            )
        )
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("id") == 1:
                break
        assert frame["data"]["ok"] is True

    # An untrusted certificate is refused by a verifying client (nothing is silently allowed).
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(url, ssl=ssl.create_default_context()):
            pass


async def test_https_has_hsts_and_http2_and_plain_http_is_redirected(
    start_server: StartServer, tls_nginx: StartNginx
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    proxy = tls_nginx(server.url.removeprefix("http://"))
    context = trusting(proxy.certificate)
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.url + "/healthz", ssl=context) as response:
            assert response.status == 200
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        plain = f"http://127.0.0.1:{proxy.redirect_port}/operator?x=1"
        async with http.get(plain, allow_redirects=False) as response:
            assert response.status == 301
            location = response.headers["Location"]
            assert location.startswith("https://127.0.0.1") and location.endswith("/operator?x=1")

    # ALPN offers h2; the protocol is TLS 1.2 or newer.
    def handshake() -> tuple[str | None, str | None]:
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.selected_alpn_protocol(), tls.version()

    alpn, version = await asyncio.to_thread(handshake)
    assert alpn == "h2"
    assert version in ("TLSv1.2", "TLSv1.3")
