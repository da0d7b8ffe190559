"""JSON log lines in the schema every ShopCardd process shares (``shopcardd_commands.logs``,
docs/logging.md): ``time``, ``level``, ``logger``, ``message``, ``service`` and the ``extra``
fields of the call, uvicorn's lines included."""

from __future__ import annotations

import logging

from shopcardd_commands.logs import json_handler

SERVICE = "shopcardd-backend"


def configure_logging(level: str = "INFO", access_log: bool = False) -> None:
    """Send every log line (ours and uvicorn's) to stderr as JSON."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service=SERVICE)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = not access_log
