"""Documents made from the event catalogue, never written by hand: ``GET /ws/handlers``,
``GET /asyncapi.json`` (AsyncAPI 3.0) and README's event and error tables (a test compares
README with :func:`markdown_tables`)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from pydantic import BaseModel

from ..domain.events import CATALOGUE, ClientEvent, ErrorAck, ServerEvent
from ..errors import error_classes

NAMESPACE = "/chat"
SCHEMAS = "#/components/schemas/{model}"


def _version() -> str:
    try:
        return metadata.version("consultation-server")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0"


def _schema(model: type[BaseModel], defs: dict[str, Any], *, serialization: bool) -> Any:
    """The model's JSON schema with its nested models moved to ``defs`` (refs to
    ``#/components/schemas``, valid at the top of an AsyncAPI document)."""
    schema = model.model_json_schema(
        by_alias=True,
        ref_template=SCHEMAS,
        mode="serialization" if serialization else "validation",
    )
    defs.update(schema.pop("$defs", {}))
    return schema


def _server_schema(event: type[ServerEvent], defs: dict[str, Any]) -> Any:
    schema = event.payload_schema()
    # payload_schema() uses pydantic's default refs; rebuild them against components.
    if "$defs" in schema:
        for name, sub in schema.pop("$defs").items():
            defs[name] = sub
    return _retarget(schema)


def _retarget(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _retarget(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_retarget(v) for v in node]
    return node


def _client_entry(event: ClientEvent, defs: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": event.name,
        "summary": event.summary,
        "payload": _schema(event.payload, defs, serialization=False),
        "ack": _schema(event.ack, defs, serialization=True),
        "errorAck": _schema(ErrorAck, defs, serialization=True),
        "causes": [cause.name for cause in event.causes],
    }


def handlers() -> dict[str, Any]:
    """``GET /ws/handlers``: every client event (payload schema, ack, what it can cause) and
    every server event (payload schema)."""
    defs: dict[str, Any] = {}
    client = [_client_entry(event, defs) for event in CATALOGUE.client]
    server = [
        {"name": e.name, "summary": e.summary, "payload": _server_schema(e, defs)}
        for e in CATALOGUE.server
    ]
    return {
        "namespace": NAMESPACE,
        "transports": {"socketio": "/socket.io/ (namespace /chat)", "websocket": "/ws/chat"},
        "clientEvents": client,
        "serverEvents": server,
        "errors": [{"code": e.code, "httpStatus": e.http_status} for e in error_classes()],
        "schemas": _retarget(defs),
    }


def asyncapi(host: str = "localhost:8080") -> dict[str, Any]:
    """The ``/chat`` namespace as an AsyncAPI 3.0 document: one channel (the namespace), its
    events as messages, each client event a ``receive`` operation whose ``reply`` is its ack,
    each server event a ``send`` operation."""
    defs: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_ref = {"$ref": "#/channels/chat"}

    def message(key: str, name: str, summary: str, payload: Any) -> dict[str, str]:
        messages[key] = {"name": name, "title": name, "summary": summary, "payload": payload}
        return {"$ref": f"#/channels/chat/messages/{key}"}

    error_ack = message(
        "errorAck",
        "ack",
        "The acknowledgement of any client event that failed: {ok: false, error}",
        _schema(ErrorAck, defs, serialization=True),
    )
    for event in CATALOGUE.client:
        entry = _client_entry(event, defs)
        sent = message(event.name, event.name, event.summary, entry["payload"])
        ack = message(
            f"{event.name}Ack", "ack", f"The acknowledgement of {event.name}", entry["ack"]
        )
        operations[f"receive_{event.name}"] = {
            "action": "receive",
            "channel": channel_ref,
            "summary": event.summary,
            "messages": [sent],
            "reply": {"channel": channel_ref, "messages": [ack, error_ack]},
        }
    for server_event in CATALOGUE.server:
        ref = message(
            server_event.name,
            server_event.name,
            server_event.summary,
            _server_schema(server_event, defs),
        )
        operations[f"send_{server_event.name}"] = {
            "action": "send",
            "channel": channel_ref,
            "summary": server_event.summary,
            "messages": [ref],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Consultation server",
            "version": _version(),
            "description": (
                "Consultation rooms with an AI assistant and live operators. Every client event "
                "takes an acknowledgement (the operation's reply). The same events, payloads "
                "and acks are served over Socket.IO (namespace /chat) and over a plain "
                'WebSocket (/ws/chat, frames {"event", "data", "id"}).'
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "socketio": {
                "host": host,
                "protocol": "ws",
                "pathname": "/socket.io/",
                "description": "Socket.IO v5 (socket.io-client 4.x), namespace /chat",
            },
            "websocket": {
                "host": host,
                "protocol": "ws",
                "pathname": "/ws/chat",
                "description": "Plain WebSocket, JSON frames",
            },
        },
        "channels": {
            "chat": {
                "address": NAMESPACE,
                "title": "The /chat namespace",
                "messages": messages,
            }
        },
        "operations": operations,
        "components": {"schemas": _retarget(defs)},
    }


# -- README --------------------------------------------------------------------------------------


def _fields(schema: dict[str, Any]) -> str:
    """``{consultationId, lastSeq?}``: the payload's fields, optional ones marked."""
    required = set(schema.get("required", ()))
    names = [n if n in required else f"{n}?" for n in schema.get("properties", {})]
    return "{" + ", ".join(names) + "}" if names else "{}"


def markdown_tables() -> str:
    """README's event and error tables (between its ``catalogue`` markers)."""
    defs: dict[str, Any] = {}
    lines = [
        "#### Client → server",
        "",
        "| event | payload | ack | what it does | server events it can cause |",
        "|---|---|---|---|---|",
    ]
    for event in CATALOGUE.client:
        entry = _client_entry(event, defs)
        ack = _fields(entry["ack"])
        causes = ", ".join(f"`{name}`" for name in entry["causes"]) or "—"
        lines.append(
            f"| `{event.name}` | `{_fields(entry['payload'])}` | `{ack}` | "
            f"{event.summary} | {causes} |"
        )
    lines += ["", "#### Server → client", "", "| event | payload | when |", "|---|---|---|"]
    for server_event in CATALOGUE.server:
        payload = _fields(server_event.payload_schema())
        lines.append(f"| `{server_event.name}` | `{payload}` | {server_event.summary} |")
    lines += ["", "#### Error codes", "", "| code | HTTP | when |", "|---|---|---|"]
    for error in error_classes():
        when = (error.__doc__ or "").strip().replace("``", "`")
        lines.append(f"| `{error.code}` | {error.http_status} | {when} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"


def with_tables(readme: str) -> str:
    """README with its catalogue section regenerated."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + markdown_tables() + END + tail


if __name__ == "__main__":  # python -m server.transport.catalogue_docs README.md
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(with_tables(path.read_text()))
