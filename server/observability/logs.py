"""Logging set-up: ``LOG_FORMAT=text`` (readable lines) or ``json`` (one object per line, for
log pipelines), ``LOG_LEVEL``. Every line names the instance; lines about a connection, an
event or a reply carry their fields (``extra={"fields": {...}}``): connectionId, userId,
tenant, consultationId, outcome, timings. Message text appears only with ``LOG_CONTENT=true``
(the domain decides); tokens never do."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any


class InstanceFilter(logging.Filter):
    """Stamps every record with the instance that wrote it."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = self.instance
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return {k: v for k, v in fields.items() if v is not None} if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "instance": getattr(record, "instance", None),
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        head, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{head} [{pairs}]{newline}{rest}"


def configure(level: str, log_format: str, instance: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(InstanceFilter(instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log repeats every request; its errors stay on.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
