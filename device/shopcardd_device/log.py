"""Structured log lines: one JSON object per event, so a journal can be searched by field."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from .inputs import safe_code

LOGGER_NAME = "shopcardd_device"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, event and the fields given to it."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        # a field may carry a scanned code or a file name: undecodable bytes would make invalid JSON
        safe = {name: safe_code(value) if isinstance(value, str) else value for name, value in line.items()}
        return json.dumps(safe, default=lambda value: safe_code(str(value)), separators=(",", ":"))


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def event(
    logger: logging.Logger, name: str, level: int = logging.INFO, exc: bool = False, **fields: Any
) -> None:
    """Log ``name`` with ``fields`` as JSON members (``exc`` adds the exception being handled)."""
    logger.log(level, name, extra={"fields": fields}, exc_info=exc)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send the device's log to ``stream`` (stderr) as JSON lines; called from ``main`` only."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
