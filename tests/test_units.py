"""Small pure functions: configuration parsing, client addresses, payload schemas."""

from __future__ import annotations

import pytest
import socketio
from socketio import packet as sio_packet

from server.config import ConfigError, Settings
from server.domain.models import ConsultationKey
from server.transport.fanout import encode_event
from server.transport.net import client_address, parse_networks


def test_settings_defaults_are_the_embedded_mode() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.mongodb_url is None and settings.redis_url is None
    assert settings.dev_auth is True
    assert settings.allowed_origins == "*"
    assert settings.ai_models == ("gpt-4o-mini",)


def test_settings_read_lists_numbers_and_hide_secrets() -> None:
    settings = Settings.from_env(
        {
            "AI_MODELS": " a , b,,c ",
            "PORT": "9000",
            "JWT_SECRET": "s3cret",
            "OPENAI_API_KEY": "sk-live",
            "MONGODB_URL": "mongodb://user:pw@db",
            "CORS_ORIGINS": "https://app.example",
            "TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert settings.ai_models == ("a", "b", "c")
    assert settings.port == 9000
    assert settings.allowed_origins == ["https://app.example"]
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    for secret in ("s3cret", "sk-live", "pw@db"):
        assert secret not in repr(settings)


def test_without_cors_origins_a_jwt_server_is_same_origin_only() -> None:
    assert Settings.from_env({"JWT_SECRET": "x"}).allowed_origins is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "x"}, "PORT must be an integer"),
        ({"AI_CONTEXT_MESSAGES": "0"}, "AI_CONTEXT_MESSAGES must be >= 1"),
        ({"AI_TIMEOUT_SECONDS": "soon"}, "AI_TIMEOUT_SECONDS must be a number"),
        ({"TRUSTED_PROXIES": "10.0.0.300"}, "not an IP address"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.1.1.1", "198.51.100.7", "198.51.100.7"),
        ("10.1.1.1", "6.6.6.6, 198.51.100.7, 10.2.2.2", "198.51.100.7"),  # spoofed left part
        ("127.0.0.1", None, "127.0.0.1"),
        ("10.1.1.1", "10.3.3.3", "10.3.3.3"),  # only proxies: the left-most
        ("10.1.1.1", "garbage", "garbage"),
    ],
)
def test_client_address_trusts_forwarded_for_only_from_proxies(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.1.1.1", "1.2.3.4", ()) == "10.1.1.1"


def test_room_names_cannot_collide_across_tenants() -> None:
    assert ConsultationKey("a:b", "c").room != ConsultationKey("a", "b:c").room


@pytest.mark.parametrize(
    ("namespace", "data"),
    [
        ("/chat", ["userMessage", {"seq": 1, "content": 'é ü \u2028 "q"', "userId": None}]),
        ("/chat", ["aiChunk", {"parts": [1, 2.5, True, [], {}]}]),
        ("/", ["ping"]),
    ],
)
def test_broadcast_encoding_matches_python_socketio(namespace: str, data: list[object]) -> None:
    server = socketio.AsyncServer()
    stock = server.packet_class(sio_packet.EVENT, namespace=namespace, data=data).encode()
    assert encode_event(server.packet_class, namespace, data) == stock


def test_binary_broadcasts_are_left_to_python_socketio() -> None:
    packet_class = socketio.AsyncServer().packet_class
    assert encode_event(packet_class, "/chat", ["file", {"blob": b"\x00\x01"}]) is None
