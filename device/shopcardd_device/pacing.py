"""Pacing for the shop LAN node (``lan.py``): how much a flood may cost, and how much it may log.

A token bucket caps the datagrams read and the signatures checked a second; a throttle keeps the
log to one line per reason per ``LOG_EVERY_SECONDS``, counting the lines it left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from .log import event

MAX_DATAGRAMS_PER_SECOND: Final = 500
"""The receiving thread's pace: a flood beyond it is dropped by the kernel, at no cost here."""
MAX_CHECKS_PER_SECOND: Final = 100
"""Signatures checked at most (about 5 ms of CPU a second): datagrams that name a peer but are
forged cost a check each, so beyond this they are dropped unchecked (``over_budget``). A shop's
own traffic is a hello per peer every few seconds and a message per redemption or page."""
LOG_EVERY_SECONDS: Final = 10.0


class Budget:
    """A token bucket: at most ``rate`` a second, bursts of up to ``rate``."""

    def __init__(self, rate: float, monotonic: Callable[[], float]) -> None:
        self.rate, self._monotonic = rate, monotonic
        self._tokens, self._at = rate, monotonic()

    def take(self) -> bool:
        now = self._monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Throttle:
    """At most one log line per reason per ``LOG_EVERY_SECONDS``; the lines left out are counted."""

    def __init__(self, logger: logging.Logger, monotonic: Callable[[], float]) -> None:
        self._logger, self._monotonic = logger, monotonic
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def log(self, name: str, reason: str, **fields: object) -> None:
        now = self._monotonic()
        if now - self._last.get(reason, -LOG_EVERY_SECONDS) < LOG_EVERY_SECONDS:
            self._quiet[reason] = self._quiet.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._quiet.pop(reason, 0)
        event(self._logger, name, logging.WARNING, reason=reason, suppressed=suppressed, **fields)
