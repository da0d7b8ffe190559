"""The device's log: JSON lines in the schema every ShopCardd process shares
(``shopcardd_commands.logs``, docs/logging.md), each carrying this device's id."""

from __future__ import annotations

import logging
from typing import Any, TextIO

from shopcardd_commands.logs import json_handler

LOGGER_NAME = "shopcardd_device"
SERVICE = "shopcardd-device"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def event(
    logger: logging.Logger, name: str, level: int = logging.INFO, exc: bool = False, **fields: Any
) -> None:
    """Log ``name`` (the line's ``message``) with ``fields`` as JSON members (``exc`` adds the
    traceback of the exception being handled as ``exception``)."""
    logger.log(level, name, extra=fields, exc_info=exc)


def setup_logging(level: str = "info", device_id: str | None = None, stream: TextIO | None = None) -> None:
    """Send the device's log to ``stream`` (stderr) as JSON lines; called from ``main`` only."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [json_handler(stream, service=SERVICE, device_id=device_id)]
    logger.setLevel(level.upper())
    logger.propagate = False
