"""One server event on its way to connections, encoded at most once per wire format."""

from __future__ import annotations

import json
from typing import Any

from ..domain.events import ServerEvent


class Frame:
    """An event's name and JSON payload. Each transport's codec encodes it once per
    broadcast and keeps the result in ``encoded`` (keyed by the codec), shared by every
    recipient of that transport."""

    __slots__ = ("data_json", "encoded", "event")

    def __init__(self, event: str, data_json: str) -> None:
        self.event = event
        self.data_json = data_json
        self.encoded: dict[object, Any] = {}

    @classmethod
    def of(cls, event: ServerEvent) -> Frame:
        return cls(event.name, json.dumps(event.to_wire(), separators=(",", ":")))
