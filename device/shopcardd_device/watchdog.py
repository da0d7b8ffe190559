"""systemd's notify protocol for the scan loop: READY=1 once started, WATCHDOG=1 while it turns.

The verifier unit is ``Type=notify`` with ``WatchdogSec=``: systemd sets ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC`` and restarts the service when the feeding stops. Only the loop itself feeds
(``Scanner(heartbeat=watchdog.feed)``), never a thread of its own, so a loop stuck in a camera
read, a decoder or a locked ledger stops feeding and is restarted. Outside systemd (no
``NOTIFY_SOCKET``) every method does nothing. The protocol is a few lines over a unix datagram
socket (sd_notify(3)), so no library is needed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from .closing import Closing
from .log import event, get_logger

log = get_logger("watchdog")


class Watchdog(Closing):
    """Tells systemd the loop is ready, then that it is alive, at most four times per watchdog interval."""

    def __init__(
        self,
        address: str | None,
        interval_usec: int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.interval = interval_usec / 1_000_000 if interval_usec else None
        self._monotonic = monotonic
        self._last_fed: float | None = None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Watchdog:
        """What systemd handed this process; a watchdog meant for another PID is not ours to feed."""
        address = environ.get("NOTIFY_SOCKET") or None
        usec = environ.get("WATCHDOG_USEC", "")
        meant_for = environ.get("WATCHDOG_PID", "")
        ours = not meant_for or meant_for == str(os.getpid())
        return cls(address, int(usec) if usec.isdigit() and ours else None)

    @property
    def is_enabled(self) -> bool:
        """Whether systemd listens (the unit is ``Type=notify``)."""
        return self.address is not None

    @property
    def is_feeding(self) -> bool:
        """Whether systemd expects WATCHDOG=1 (the unit sets ``WatchdogSec=``)."""
        return self.is_enabled and self.interval is not None

    def ready(self, *, feeding: bool = True) -> None:
        """Start-up is over. ``feeding=False`` (a loop that may wait on a person, such as a keyboard
        scanner's read) turns systemd's watchdog off for this run instead of being killed while idle."""
        if not feeding and self.is_feeding:
            self.interval = None
            self._send("WATCHDOG_USEC=0")
            event(log, "watchdog_off", reason="the frame source waits for input; the loop cannot feed")
        self._send("READY=1\nSTATUS=scanning")

    def feed(self) -> None:
        """One turn of the loop; sends WATCHDOG=1 when a quarter of the interval has passed."""
        if not self.is_feeding or self.interval is None:
            return
        now = self._monotonic()
        if self._last_fed is not None and now - self._last_fed < self.interval / 4:
            return
        self._last_fed = now
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address  # abstract
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), target)
        except OSError as exc:  # systemd gone or restarting: scanning goes on; a missed feed is its call
            event(
                log, "notify_failed", logging.WARNING, error=str(exc), notification=message.split("\n", 1)[0]
            )

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
