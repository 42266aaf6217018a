"""Delivery to this instance's connections: the per-connection outbox (and, in time, the room
hub and its ordering state machine, now in ``transport/rooms.py``)."""
