"""One log schema for every ShopCardd process, so one pipeline reads the whole fleet.

Each log record is one JSON object on one line, built by the standard ``logging`` machinery
with this one formatter (the device and the backend both use it; docs/logging.md lists the
fields): ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
``service``, then the fields the call gave as ``extra`` (``device_id``, ``merchant_id``,
``deal_id``, ``voucher_id``, ``error``, ...), and ``exception`` with the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
    "taskName",  # Python 3.12 adds it to every record
}


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a byte that was not UTF-8 (a file name, a scanned code, kept by
    ``surrogateescape``) as ``\\xff``, so strict JSON readers (jq, Go, Rust) take every line."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonFormatter(logging.Formatter):
    """A record as one JSON line in the shared schema; ``static`` fields go on every line."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        safe = {key: printable(value) if isinstance(value, str) else value for key, value in line.items()}
        return json.dumps(safe, default=lambda value: printable(str(value)), separators=(",", ":"))


def json_handler(stream: TextIO | None = None, **static: Any) -> logging.Handler:
    """A handler writing the shared schema to ``stream`` (stderr): for a process's ``main`` only."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    return handler
