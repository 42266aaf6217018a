"""The pure parts: settings, client addresses, payload schemas, the SSE decoder, JWT claims, the
rate limiter's warning, the fallback chain, the error hierarchy, the event catalogue."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import socketio
from socketio import packet as sio_packet

from server.ai.fallback import FallbackAssistant
from server.ai.openai_provider import SseDecoder
from server.config import ConfigError, Settings
from server.coordination.rates import MemoryRateLimits
from server.domain.events import CATALOGUE, JoinConsultation, SendMessage
from server.domain.models import Author, ConsultationKey, Identity, Role
from server.domain.policies import RateLimiter, RatePolicy
from server.domain.ports import Delta, ReplyRequest, Turn
from server.errors import (
    AppError,
    AssistantUnavailable,
    InvalidPayload,
    RateLimited,
    ReplyInterrupted,
    Unauthorized,
    error_classes,
)
from server.fanout.frames import Frame
from server.transport import catalogue_docs
from server.transport.auth import Authenticator
from server.transport.net import client_address, parse_networks
from server.transport.sinks import websocket_frame as text_frame
from server.transport.socketio.codec import SocketIOCodec
from server.transport.websocket import raw_encoding
from tests.conftest import JWT_SECRET, ROOT

# -- settings -------------------------------------------------------------------------------------


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
            "JWT_SECRET": "s3cret-" + "k" * 40,
            "OPENAI_API_KEY": "sk-live",
            "MONGODB_URL": "mongodb://user:pw@db",
            "CORS_ORIGINS": "https://app.example",
            "TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "AI_REPLIES": "off",
            "LOG_LEVEL": "debug",
            "MAX_CONNECTIONS": "  ",  # blank: unset
        }
    )
    assert settings.ai_models == ("a", "b", "c")
    assert settings.port == 9000
    assert settings.allowed_origins == ["https://app.example"]
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    assert settings.ai_replies is False
    assert settings.log_level == "DEBUG"
    assert settings.max_connections == 10_000
    for secret in ("s3cret", "sk-live", "pw@db"):
        assert secret not in repr(settings)


def test_without_cors_origins_a_jwt_server_is_same_origin_only() -> None:
    assert Settings.from_env({"JWT_SECRET": "x" * 32}).allowed_origins is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "x"}, "PORT must be an integer, got 'x'"),
        ({"AI_CONTEXT_MESSAGES": "0"}, "AI_CONTEXT_MESSAGES must be >= 1"),
        ({"AI_TIMEOUT_SECONDS": "soon"}, "AI_TIMEOUT_SECONDS must be a number"),
        ({"TRUSTED_PROXIES": "10.0.0.300"}, "not an IP address"),
        ({"WS_COMPRESSION": "maybe"}, "WS_COMPRESSION must be true or false"),
        ({"MAX_HTTP_BUFFER_SIZE": "10"}, "MAX_HTTP_BUFFER_SIZE must be >= 1024"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_the_readme_configuration_table_lists_exactly_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented: set[str] = set()
    for row in re.findall(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \|", section, re.M):
        documented.update(re.findall(r"`([A-Z_]+)`", row))
    assert documented == set(Settings.env_names())


def test_the_readme_configuration_defaults_match_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    defaults = Settings.from_env({})
    for names, default_cell in re.findall(
        r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| ([^|]*) \|", section, re.M
    ):
        values = re.findall(r"`([^`]*)`", default_cell)
        for name, documented in zip(re.findall(r"`([A-Z_]+)`", names), values, strict=False):
            actual = getattr(defaults, name.lower())
            if isinstance(actual, tuple):
                actual = ",".join(actual)
            if isinstance(actual, bool):
                assert documented in ({"on", "true"} if actual else {"off", "false"}), name
            elif isinstance(actual, (int, float)) and not isinstance(actual, bool):
                assert float(documented) == actual, name
            elif isinstance(actual, str) and documented:
                assert documented == actual, name


# -- client addresses -----------------------------------------------------------------------------

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


# -- payloads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message", "field"),
    [
        (
            {"consultationId": "bad id"},
            "consultationId may only contain letters, digits",
            "consultationId",
        ),
        ({}, "consultationId is required", "consultationId"),
        ({"consultationId": 5}, "consultationId must be a string", "consultationId"),
        ({"consultationId": "x" * 200}, "consultationId is longer than 128", "consultationId"),
        ({"consultationId": "ok", "lastSeq": -1}, "lastSeq must be at least 0", "lastSeq"),
        ({"consultationId": "ok", "lastSeq": "3"}, "lastSeq must be an integer", "lastSeq"),
    ],
)
def test_invalid_payloads_are_explained_for_people(
    payload: dict[str, Any], message: str, field: str
) -> None:
    with pytest.raises(InvalidPayload) as raised:
        JoinConsultation.parse(payload)
    assert raised.value.message.startswith(message), raised.value.message
    assert "pattern" not in raised.value.message and "Input should" not in raised.value.message
    assert raised.value.to_wire()["field"] == field


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="must be an object, not a string"):
        SendMessage.parse("hello")


# -- the SSE decoder ------------------------------------------------------------------------------


def decode(lines: list[str]) -> list[str]:
    decoder = SseDecoder()
    return [data for line in lines if (data := decoder.feed(line)) is not None]


def test_sse_events_end_at_a_blank_line() -> None:
    assert decode(['data: {"a":1}', "", "data: [DONE]", ""]) == ['{"a":1}', "[DONE]"]


def test_sse_multi_line_data_is_joined_with_newlines() -> None:
    lines = ["data: {", 'data:   "a": 1', "data: }", ""]
    assert decode(lines) == ['{\n  "a": 1\n}']


def test_sse_comments_other_fields_and_blank_runs_are_ignored() -> None:
    lines = [": keep-alive", "", "event: message", "id: 7", "retry: 10", "data:x", "", ""]
    assert decode(lines) == ["x"]
    assert decode(["data: unterminated"]) == []  # an event without its blank line is dropped


# -- JWT claims -----------------------------------------------------------------------------------

AUTH = Authenticator.with_secret(JWT_SECRET)


def claims_token(**claims: Any) -> str:
    return jwt.encode(
        {"exp": datetime.now(UTC) + timedelta(minutes=5), **claims}, JWT_SECRET, "HS256"
    )


async def test_jwt_claims_make_the_identity() -> None:
    token = claims_token(sub="u1", tenant="t1", role="operator", name="Olga")
    identity = await AUTH.identify(token)
    assert (identity.user_id, identity.tenant_id, identity.role) == ("u1", "t1", Role.OPERATOR)
    assert identity.name == "Olga" and identity.expires_at is not None
    defaults = await AUTH.identify(claims_token(sub="u2"))
    assert (defaults.tenant_id, defaults.role, defaults.name) == ("default", Role.USER, None)


@pytest.mark.parametrize(
    "claims",
    [{"sub": ""}, {"sub": 5}, {"sub": "u", "tenant": ""}, {"sub": "u", "role": "root"}, {}],
)
async def test_jwt_claims_that_make_no_identity_are_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        await AUTH.identify(claims_token(**claims))


async def test_dev_auth_makes_guests_and_refuses_tokens() -> None:
    dev = Authenticator.with_secret(None)
    first, second = await dev.identify(None), await dev.identify(None)
    assert first.user_id.startswith("guest-") and first.user_id != second.user_id
    with pytest.raises(Unauthorized):
        await dev.identify(claims_token(sub="u1"))


async def test_issued_tokens_verify() -> None:
    token = AUTH.issue("u9", tenant="t9", role=Role.ADMIN, name="Ada")
    identity = await AUTH.identify(token)
    assert (identity.user_id, identity.tenant_id, identity.role) == ("u9", "t9", Role.ADMIN)


# -- the rate limiter -----------------------------------------------------------------------------


async def test_the_rate_limiter_warns_from_80_percent_then_refuses() -> None:
    limiter = RateLimiter(MemoryRateLimits(), RatePolicy(messages=5, window_seconds=30))
    user = Identity("u1", "t1")
    warnings = [limiter.warning(await limiter.hit(user)) for _ in range(5)]
    assert warnings[:3] == [None, None, None]
    assert [w.remaining for w in warnings[3:] if w is not None] == [1, 0]
    assert warnings[3] is not None and warnings[3].to_wire() == {
        "limit": 5,
        "remaining": 1,
        "windowSeconds": 30,
    }
    with pytest.raises(RateLimited) as refused:
        await limiter.hit(user)
    assert 1 <= refused.value.to_wire()["retryAfter"] <= 30
    assert (await limiter.hit(Identity("u2", "t1"))).allowed  # per user


# -- the fallback chain ---------------------------------------------------------------------------


@dataclass
class Scripted:
    """An assistant that fails before any text, after some, or answers."""

    name: str
    fail_after: int | None = None
    calls: int = 0
    closed: bool = False

    async def stream(self, request: ReplyRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        for i, word in enumerate(["one ", "two ", "three "]):
            if self.fail_after == i:
                raise ReplyInterrupted() if i else AssistantUnavailable()
            yield Delta(word, self.name)

    async def close(self) -> None:
        self.closed = True


REQUEST = ReplyRequest("be brief", [Turn(Author.USER, "hi")])


async def collect(assistant: FallbackAssistant) -> list[Delta]:
    return [delta async for delta in assistant.stream(REQUEST)]


async def test_the_chain_moves_on_only_before_the_first_token() -> None:
    down, good = Scripted("down", fail_after=0), Scripted("good")
    deltas = await collect(FallbackAssistant([down, good]))
    assert [d.model for d in deltas] == ["good"] * 3
    broken, spare = Scripted("broken", fail_after=2), Scripted("spare")
    with pytest.raises(ReplyInterrupted):
        await collect(FallbackAssistant([broken, spare]))
    assert spare.calls == 0  # text had reached the room: no restart on another model


async def test_a_chain_where_every_model_fails_is_unavailable_and_closes_them_all() -> None:
    closed_client: list[bool] = []

    async def close_client() -> None:
        closed_client.append(True)

    chain = [Scripted("a", fail_after=0), Scripted("b", fail_after=0)]
    assistant = FallbackAssistant(chain, close=close_client)
    with pytest.raises(AssistantUnavailable, match="No model"):
        await collect(assistant)
    await assistant.close()
    assert all(s.closed for s in chain) and closed_client == [True]


# -- errors and the catalogue ---------------------------------------------------------------------


def test_every_error_code_has_an_http_status() -> None:
    classes = error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert {"rate_limited", "coordination_unavailable", "too_many_connections"} <= set(codes)
    statuses = {cls.code: cls.http_status for cls in classes}
    assert statuses["rate_limited"] == 429 and statuses["coordination_unavailable"] == 503
    assert statuses["too_many_connections"] == 429 and statuses["not_found"] == 404
    assert all(400 <= status < 600 for status in statuses.values())
    assert AppError.http_status == 500


def test_every_catalogue_handler_exists() -> None:
    from server.domain.session import ChatSession

    for entry in CATALOGUE.client:
        assert callable(getattr(ChatSession, entry.handler, None)), entry.name
        assert set(entry.causes) <= set(CATALOGUE.server), entry.name


# -- broadcast encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"seq": 1, "content": 'é ü \u2028 "q" </script>', "userId": None},
        {"parts": [1, 2.5, True, [], {}]},
    ],
)
def test_a_frame_encodes_as_python_socketio_and_as_plain_json(data: dict[str, object]) -> None:
    server = socketio.AsyncServer()
    stock = server.packet_class(sio_packet.EVENT, namespace="/chat", data=["ev", data]).encode()
    frame = Frame("ev", json.dumps(data, separators=(",", ":")))
    text, wire = SocketIOCodec("/chat").encode(frame)
    assert text == "4" + stock
    assert wire[0] == 0x81 and wire.endswith(text.encode())
    raw_text, ws = raw_encoding(frame)
    assert json.loads(raw_text) == {"event": "ev", "data": data}
    assert ws[0] == 0x81 and ws.endswith(raw_text.encode())


@pytest.mark.parametrize("size", [10, 200, 70_000])
def test_text_frames_carry_their_length(size: int) -> None:
    encoded = text_frame(b"x" * size)
    header = len(encoded) - size
    assert header == {10: 2, 200: 4, 70_000: 10}[size]


# -- the dialogue given to the model --------------------------------------------------------------


def test_a_reply_follows_what_it_answered_in_the_dialogue() -> None:
    from server.domain.models import Message
    from server.domain.replies import dialogue

    key = ConsultationKey("t", "c")

    def stored(seq: int, role: Author, text: str, answers: int | None = None) -> Message:
        message = Message.new(key, role, text, answers_seq=answers)
        return message.model_copy(update={"seq": seq})

    # "second" was sent while the first reply streamed: stored before it, asked after it.
    history = [
        stored(1, Author.USER, "first"),
        stored(2, Author.USER, "second"),
        stored(3, Author.ASSISTANT, "answer to first", answers=1),
    ]
    assert [t.content for t in dialogue(history)] == ["first", "answer to first", "second"]
    older = [stored(1, Author.USER, "q"), stored(2, Author.ASSISTANT, "a")]  # before answers_seq
    assert [t.content for t in dialogue(older)] == ["q", "a"]


def test_the_readme_event_tables_are_the_catalogues() -> None:
    readme = (ROOT / "README.md").read_text()
    assert catalogue_docs.with_tables(readme) == readme, (
        "README's event tables differ from the catalogue: run "
        "`python -m server.transport.catalogue_docs README.md`"
    )
    tables = readme.split(catalogue_docs.START, 1)[1].split(catalogue_docs.END, 1)[0]
    for event in CATALOGUE.client:
        assert f"| `{event.name}` |" in tables
    for server_event in CATALOGUE.server:
        assert f"| `{server_event.name}` |" in tables
    for error in error_classes():
        assert f"| `{error.code}` | {error.http_status} |" in tables
