"""What the bridge (server/transport/socketio/bridge.py) relies on from python-socketio and
python-engineio: documented options and public classes only. An upgrade that changes one of
these fails here, before it fails in a client."""

from __future__ import annotations

import inspect

import engineio
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from server.transport.socketio.bridge import SOCKETIO_TYPES


def test_the_server_runs_in_its_documented_asgi_mode() -> None:
    server = socketio.AsyncServer(async_mode="asgi")
    assert server.async_mode == "asgi"
    assert inspect.iscoroutinefunction(server.handle_request)
    assert inspect.iscoroutinefunction(server.disconnect)
    assert inspect.iscoroutinefunction(server.eio.send_packet)
    assert inspect.iscoroutinefunction(server.eio.disconnect)
    assert isinstance(server.eio, engineio.AsyncServer)


def test_an_ack_is_encoded_as_the_bridge_expects_it() -> None:
    """The outbox holds later frames until the ACK "3/chat,<id>[" has passed ("4" first)."""
    ack = sio_packet.Packet(sio_packet.ACK, namespace="/chat", id=12, data=[{"ok": True}])
    assert ack.encode() == '3/chat,12[{"ok":true}]'
    root = sio_packet.Packet(sio_packet.ACK, namespace="/", id=3, data=["x"])
    assert root.encode() == '33["x"]'


def test_decoded_events_expose_what_the_protocol_edge_checks() -> None:
    event = sio_packet.Packet(encoded_packet='2/chat,7["sendMessage",{"a":1}]')
    assert (event.packet_type, event.namespace, event.id) == (sio_packet.EVENT, "/chat", 7)
    assert event.data == ["sendMessage", {"a": 1}]
    binary = sio_packet.Packet(encoded_packet='52-/chat,["x",{"_placeholder":true,"num":0}]')
    assert binary.packet_type == sio_packet.BINARY_EVENT and binary.attachment_count == 2
    assert {sio_packet.CONNECT_ERROR, 7} & SOCKETIO_TYPES == set()


def test_an_engineio_message_is_its_payload_after_a_4() -> None:
    assert eio_packet.Packet(eio_packet.MESSAGE, '2/chat,["x"]').encode() == '42/chat,["x"]'
    assert eio_packet.Packet(eio_packet.NOOP).encode() == "6"
