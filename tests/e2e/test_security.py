"""Secure by default: start-up refusals, asymmetric tokens (a public key, a JWKS with a key
rotation), /metrics behind its token, page headers, the Origin check on /ws/chat, and tokens
that never reach the logs. Real servers on real sockets throughout."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
import websockets
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.transport.pages import CDN_CLIENT_INTEGRITY, CDN_CLIENT_URL
from tests.conftest import JWT_SECRET, Connect, StartServer, make_token
from tests.helpers import ChatClient, RawClient
from tests.servers import ROOT, AppProcess, clean_env, free_port, serve, wait_for_port

METRICS_TOKEN = "scrape-" + "s" * 40


# -- start-up -----------------------------------------------------------------------------------


def run_server(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # A public bind without JWT configuration: never dev auth by accident.
        ({"HOST": "0.0.0.0"}, ["JWT_SECRET", "AUTH_MODE=dev", "HOST=0.0.0.0"]),
        ({"HOST": "::"}, ["JWT_SECRET", "AUTH_MODE=dev"]),
        ({"JWT_SECRET": "short-secret"}, ["JWT_SECRET is 12 bytes", "at least 32"]),
        (
            {"JWT_SECRET": "x" * 48, "JWT_ALGORITHMS": "HS512"},
            ["JWT_SECRET is 48 bytes", "at least 64"],
        ),
        ({"AUTH_MODE": "jwt"}, ["AUTH_MODE=jwt needs JWT_SECRET"]),
        ({"AUTH_MODE": "dev", "JWT_SECRET": JWT_SECRET}, ["AUTH_MODE=dev contradicts"]),
        ({"JWT_SECRET": JWT_SECRET, "JWT_ALGORITHMS": "none"}, ["none is not one of"]),
        (
            {"JWT_JWKS_URL": "https://idp.example/jwks.json", "JWT_ALGORITHMS": "HS256"},
            ["HS256 needs JWT_SECRET, not a public key"],
        ),
        ({"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\\nnope"}, ["JWT_PUBLIC_KEY"]),
        ({"JWT_PUBLIC_KEY": "/nonexistent/key.pem"}, ["JWT_PUBLIC_KEY", "No such file"]),
        # Visitor tokens need a key this server can sign with.
        (
            {"JWT_JWKS_URL": "https://idp.example/jwks.json", "WIDGET_KEYS": "site:t1"},
            ["WIDGET_KEYS needs VISITOR_TOKEN_SECRET"],
        ),
        ({"JWT_SECRET": JWT_SECRET, "WIDGET_KEYS": "site:t1:ftp://x"}, ["WIDGET_KEYS", "ftp://x"]),
        ({"VISITOR_TOKEN_SECRET": "short"}, ["VISITOR_TOKEN_SECRET is 5 bytes"]),
    ],
)
def test_unsafe_or_broken_auth_settings_refuse_to_start(
    env: dict[str, str], expected: list[str]
) -> None:
    result = run_server(PORT=str(free_port()), **env)
    assert result.returncode == 2, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_auth_mode_dev_on_a_public_bind_starts_and_warns_at_every_start(tmp_path: Path) -> None:
    for _ in range(2):
        port = free_port()
        with (tmp_path / "log").open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "server"],
                cwd=ROOT,
                env=clean_env(HOST="0.0.0.0", PORT=str(port), AUTH_MODE="dev"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port)
        finally:
            process.terminate()
            process.wait(timeout=15)
        text = (tmp_path / "log").read_text()
        [warning] = [line for line in text.splitlines() if "DEV AUTH" in line]
        assert " WARNING " in warning and "AUTH_MODE=dev" in warning and "0.0.0.0" in warning


# -- a public key and a JWKS --------------------------------------------------------------------


def token_signed_with(key: Any, algorithm: str, kid: str | None = None, **claims: Any) -> str:
    payload = {"sub": "pat-1", "tenant": "t1", "exp": datetime.now(UTC) + timedelta(minutes=5)}
    headers = {"kid": kid} if kid else None
    return jwt.encode({**payload, **claims}, key, algorithm=algorithm, headers=headers)


def public_pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def connect_error(url: str, token: str) -> Any:
    """The error a refused Socket.IO connect carries (``err.data`` in socket.io-client)."""
    client = ChatClient(url, token=token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect()
    assert client.connect_error is not None
    return client.connect_error["data"]


def hmac_signed(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token made by hand: PyJWT itself refuses to use a PEM key as an HMAC secret."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + part(signature)


async def test_a_pem_public_key_verifies_es256_and_refuses_hmac_with_the_public_key(
    start_server: StartServer, connect: Connect, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = public_pem(private)
    # Both forms: the PEM inline with \n written out, and a path.
    inline = await start_server(jwt_public_key=pem.replace("\n", "\\n"))
    (tmp_path / "idp.pem").write_text(pem)
    from_file = await start_server(jwt_public_key=str(tmp_path / "idp.pem"))
    for server in (inline, from_file):
        client = await connect(server.url, token=token_signed_with(private, "ES256"))
        assert (await client.join("pk-1"))["ok"]
        # Algorithm confusion: the public key (which anyone has) used as an HMAC secret.
        claims = {"sub": "mallory", "exp": int(datetime.now(UTC).timestamp()) + 300}
        forged = hmac_signed(pem.encode(), claims)
        error = await connect_error(server.url, forged)
        assert error["code"] == "unauthorized" and "algorithm" in error["message"]
        other = ec.generate_private_key(ec.SECP256R1())
        error = await connect_error(server.url, token_signed_with(other, "ES256"))
        assert error["code"] == "unauthorized"


class Jwks:
    """An identity provider's JWKS endpoint on a free port; ``keys`` is what it serves."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.url = ""

    def publish(self, kid: str, private_key: Any) -> None:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        self.keys[kid] = {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": list(self.keys.values())})


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    provider = Jwks()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", provider.handle)
    async with serve(app) as served:
        provider.url = served.url + "/.well-known/jwks.json"
        yield provider


async def test_jwks_keys_verify_and_a_rotated_key_is_fetched_without_restart(
    start_server: StartServer, connect: Connect, jwks: Jwks
) -> None:
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish("key-1", first)
    server = await start_server(jwt_jwks_url=jwks.url, jwt_jwks_refresh_cooldown_seconds=0.001)
    client = await connect(server.url, token=token_signed_with(first, "RS256", "key-1"))
    assert (await client.join("jwks-1"))["ok"]
    raw = await RawClient(server.url, token=token_signed_with(first, "RS256", "key-1")).connect()
    assert raw.of("connected")[0]["userId"] == "pat-1"
    await raw.close()
    assert jwks.fetches == 1  # cached: the second token did not fetch the set again

    # Rotation: the provider publishes key-2 and retires key-1.
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys.clear()
    jwks.publish("key-2", second)
    rotated = await connect(server.url, token=token_signed_with(second, "RS256", "key-2"))
    assert (await rotated.join("jwks-2"))["ok"]
    assert jwks.fetches == 2

    # A key the provider never published is refused.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    error = await connect_error(server.url, token_signed_with(stranger, "RS256", "key-9"))
    assert error["code"] == "unauthorized" and "key-9" in error["message"]
    # So is a token signed by someone else under a published kid.
    error = await connect_error(server.url, token_signed_with(stranger, "RS256", "key-2"))
    assert error["code"] == "unauthorized"


async def test_an_unreachable_jwks_is_a_retryable_refusal(start_server: StartServer) -> None:
    server = await start_server(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    error = await connect_error(server.url, token_signed_with(key, "RS256", "k"))
    assert error["code"] == "auth_unavailable" and error["retryable"] is True


# -- /metrics -----------------------------------------------------------------------------------


async def get(url: str, token: str | None = None) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.text(), response.headers


async def test_metrics_need_the_metrics_token(start_server: StartServer) -> None:
    server = await start_server(jwt_secret=JWT_SECRET, metrics_token=METRICS_TOKEN)
    status, _, headers = await get(server.url + "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    admin = make_token("root", role="admin")
    assert (await get(server.url + "/metrics", admin))[0] == 401  # a JWT is not a credential
    assert (await get(server.url + "/metrics", METRICS_TOKEN + "x"))[0] == 401
    status, text, _ = await get(server.url + "/metrics", METRICS_TOKEN)
    assert status == 200 and "chat_connections " in text


async def test_without_a_token_metrics_are_only_on_their_own_listener(
    start_server: StartServer,
) -> None:
    port = free_port()
    server = await start_server(jwt_secret=JWT_SECRET, metrics_port=port)
    assert (await get(server.url + "/metrics"))[0] == 404  # not on the public port
    status, text, _ = await get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "chat_connections " in text
    assert (await get(f"http://127.0.0.1:{port}/"))[0] == 404  # only /metrics there
    guarded_port = free_port()
    guarded = await start_server(
        jwt_secret=JWT_SECRET, metrics_port=guarded_port, metrics_token=METRICS_TOKEN
    )
    assert (await get(f"http://127.0.0.1:{guarded_port}/metrics"))[0] == 401
    assert (await get(f"http://127.0.0.1:{guarded_port}/metrics", METRICS_TOKEN))[0] == 200
    assert (await get(guarded.url + "/metrics", METRICS_TOKEN))[0] == 200


# -- page headers and origins -------------------------------------------------------------------


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


async def test_pages_carry_a_strict_csp_and_every_response_nosniff(
    start_server: StartServer,
) -> None:
    server = await start_server(jwt_secret=JWT_SECRET)
    for page in ("/", "/operator"):
        status, html, headers = await get(server.url + page)
        assert status == 200
        policy = directives(headers["Content-Security-Policy"])
        assert "'unsafe-inline'" not in policy["script-src"]
        assert "'unsafe-eval'" not in policy["script-src"]
        assert not any("*" in source for source in policy["script-src"])
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["object-src"] == ["'none'"]
        assert headers["X-Frame-Options"] == "DENY"
        assert "<script>" not in html
    for path in ("/", "/static/chat.js", "/healthz", "/api/consultations", "/nowhere"):
        _, _, headers = await get(server.url + path)
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path


async def raw_status(url: str, origin: str | None, token: str | None = None) -> int:
    """101 when /ws/chat accepted the upgrade, else the HTTP status it answered."""
    target = url.replace("http://", "ws://") + "/ws/chat" + (f"?token={token}" if token else "")
    try:
        async with websockets.connect(target, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.close()
            return 101
    except websockets.InvalidStatus as exc:
        return int(exc.response.status_code)


async def test_ws_chat_refuses_foreign_origins(start_server: StartServer) -> None:
    token = make_token("ana")
    same_origin = await start_server(jwt_secret=JWT_SECRET)
    own = same_origin.url
    assert await raw_status(own, "https://evil.example", token) == 403
    assert await raw_status(own, own, token) == 101  # the server's own page
    assert await raw_status(own, None, token) == 101  # not a browser: nothing to check

    listed = await start_server(jwt_secret=JWT_SECRET, cors_origins=("https://app.example",))
    assert await raw_status(listed.url, "https://app.example", token) == 101
    assert await raw_status(listed.url, "https://evil.example", token) == 403
    # Socket.IO refuses the same origin (python-engineio's check, same setting).
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            listed.url + "/socket.io/?EIO=4&transport=polling",
            headers={"Origin": "https://evil.example"},
        ) as response,
    ):
        assert response.status == 400


async def test_tokens_in_query_strings_never_reach_the_log(tmp_path: Path) -> None:
    app = AppProcess({"JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "DEBUG"}, tmp_path / "app.log").start()
    try:
        good = make_token("ana")
        expired = make_token("ana", expires_in=timedelta(seconds=-5))
        forged = make_token("ana", secret="y" * 40)
        tokens = [good, expired, forged]
        for token in tokens:
            raw = await RawClient(app.url, token=token).connect(wait_connected=token is good)
            await raw.close()
        async with aiohttp.ClientSession() as http:
            for token in tokens:
                url = f"{app.url}/socket.io/?EIO=4&transport=polling&token={token}"
                async with http.get(url) as response:
                    await response.read()
            url = f"{app.url}/api/consultations/c-1/messages?token={forged}"
            async with http.get(url) as response:
                await response.read()
        client = ChatClient(app.url + f"?token={expired}")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect()
        # A later marker: the refusals above were logged before this connection's line.
        marker = await ChatClient(app.url, token=make_token("marker-user")).connect()
        await marker.disconnect()
        await asyncio.to_thread(wait_for_log, app, "marker-user")
        log = app.log()
        assert "connection refused" in log
        for token in tokens:
            for part in token.split("."):
                assert part not in log, part
    finally:
        app.stop()


def wait_for_log(app: AppProcess, text: str, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in app.log():
        assert time.monotonic() < deadline, app.log()[-3000:]
        time.sleep(0.05)


def test_the_cdn_integrity_is_the_hash_of_the_official_bundle() -> None:
    """The SRI hash the pages send with the CDN script is that of npm's socket.io-client
    (the version the CDN URL names): a browser refuses any other bytes from the CDN."""
    package = ROOT / "tests" / "js" / "node_modules" / "socket.io-client"
    version = json.loads((package / "package.json").read_text())["version"]
    assert f"/{version}/" in CDN_CLIENT_URL
    bundle = (package / "dist" / "socket.io.min.js").read_bytes()
    digest = base64.b64encode(hashlib.sha384(bundle).digest()).decode()
    assert f"sha384-{digest}" == CDN_CLIENT_INTEGRITY
