"""The one log schema every ShopCardd process writes (docs/logging.md), as a log pipeline reads it.

Importable from every suite (``tests/`` is on pytest's ``pythonpath``), so the device's and the
backend's tests check their lines against the same fields.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

LEVELS = {"debug", "info", "warning", "error", "critical"}


def log_entry(line: str, service: str) -> dict[str, Any]:
    """``line`` parsed, after checking the fields every line of every process carries."""
    entry = json.loads(line)
    assert isinstance(entry, dict), line
    assert {"time", "level", "logger", "message", "service"} <= set(entry), line
    assert datetime.fromisoformat(entry["time"]).utcoffset() == UTC.utcoffset(None), line  # ISO 8601, UTC
    assert entry["level"] in LEVELS and entry["service"] == service, line
    return entry
