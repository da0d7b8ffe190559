"""The scan loop: frame -> decode -> debounce -> verify -> record -> signal.

Nothing a customer can hold in front of the camera stops the loop: one bad frame, one code
that is not a voucher, one exception from a source or a decoder is logged as a JSON line and
the loop reads the next frame. A code that was read but could not be recorded (the ledger
locked by another process past its timeout, a full disk) is not accepted: the panel shows
its fault pattern, and the customer scans again. A code held in view for many frames is one scan: the same
code seen again within ``debounce_seconds`` of its last sighting repeats its last verdict
without recording or signalling again (so it never turns into ``already_redeemed``, and a
phone held for a second does not beep at the frame rate). Repeats still reach ``on_scan``,
numbered (``Scan.repeats``), so a caller can say the code was seen again.
The accept signal is given only after ``Counter.scan`` returned, that is after the ledger
commit: a power cut can lose a scan not yet shown as accepted, never one that was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from shopcardd_voucher import Reason, Verdict

from . import policy
from .counter import Counter
from .decoders.base import Decoder
from .frames.base import Frame, FrameSource
from .log import event, get_logger

BACKOFF_AFTER_FAILURES: Final = 5
MAX_BACKOFF_SECONDS: Final = 5.0

log = get_logger("scanner")


class Signal(Protocol):
    """What the loop needs from the feedback panel."""

    def show(self, reason: Reason) -> None: ...

    def show_fault(self) -> None: ...

    def set_degraded(self, degraded: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Scan:
    """One decoded code and its verdict; ``repeats`` counts the sightings in a row that debounce
    answered from memory (0: judged, recorded and signalled now)."""

    code: str
    verdict: Verdict
    origin: str
    repeats: int = 0

    @property
    def repeated(self) -> bool:
        return self.repeats > 0


class Scanner:
    def __init__(
        self,
        source: FrameSource,
        decoder: Decoder | None,
        counter: Counter,
        signal: Signal | None = None,
        *,
        debounce_seconds: float = 3.0,
        on_scan: Callable[[Scan], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.source, self.decoder, self.counter, self.signal = source, decoder, counter, signal
        self.debounce_seconds = debounce_seconds
        self.on_scan = on_scan
        self.heartbeat = heartbeat
        """Called once per turn of the loop (systemd's watchdog): a stuck stage stops the calls."""
        self._monotonic, self._sleep = monotonic, sleep
        self._recent: dict[str, tuple[float, Verdict, int]] = {}
        self._stop = threading.Event()
        self.frames = self.unreadable = self.failures = 0
        """Frames read; reads that failed (for a folder of files, one unreadable file each);
        failures of any stage (reads, decodes, scans)."""

    def stop(self) -> None:
        """Ask the loop to end after the current frame (from a signal handler or a thread)."""
        self._stop.set()

    def run(self) -> None:
        """Scan until the source ends or ``stop`` is called."""
        failures_in_a_row = 0
        while not self._stop.is_set():
            if self.heartbeat is not None:
                self.heartbeat()
            self._show_health()
            try:
                frame = self.source.read()
            except Exception as exc:
                failures_in_a_row += 1
                self.failures += 1
                self.unreadable += 1
                event(log, "frame_failed", logging.WARNING, source=self.source.name, error=str(exc))
                if failures_in_a_row >= BACKOFF_AFTER_FAILURES:
                    self._sleep(min(MAX_BACKOFF_SECONDS, 0.1 * failures_in_a_row))
                continue
            if frame is None:
                event(
                    log,
                    "source_ended",
                    source=self.source.name,
                    frames_read=self.frames,
                    frames_unreadable=self.unreadable,
                )
                return
            failures_in_a_row = 0
            self.frames += 1
            self.process(frame)

    def process(self, frame: Frame) -> list[Scan]:
        """Every scan one frame gives; failures are logged, never raised."""
        try:
            codes = [frame.text] if frame.text is not None else self._decode(frame)
        except Exception as exc:
            self.failures += 1
            event(log, "decode_failed", logging.WARNING, origin=frame.origin, error=str(exc))
            return []
        scans = []
        for code in codes:
            try:
                scans.append(self.scan(code, frame.origin))
            except Exception as exc:
                self.failures += 1
                event(log, "scan_failed", logging.ERROR, exc=True, origin=frame.origin, error=str(exc))
                self._show_fault()
        return scans

    def _show_fault(self) -> None:
        """A code was read but could not be judged and recorded: say so, so nobody waits for green."""
        if self.signal is None:
            return
        try:
            self.signal.show_fault()
        except Exception as exc:  # the panel itself failing must not stop scanning
            event(log, "signal_failed", logging.WARNING, error=str(exc))

    def _decode(self, frame: Frame) -> list[str]:
        if frame.image is None or self.decoder is None:
            return []
        return self.decoder.decode(frame.image)

    def scan(self, code: str, origin: str = "") -> Scan:
        """Debounce, judge and record one code, then signal its verdict; a repeat is only reported."""
        now = self._monotonic()
        self._recent = {c: seen for c, seen in self._recent.items() if now - seen[0] <= self.debounce_seconds}
        if code in self._recent:
            _, verdict, repeats = self._recent[code]
            scan = Scan(code, verdict, origin, repeats=repeats + 1)
        else:
            scan = Scan(code, self._judge(code, origin), origin)
        self._recent[code] = (now, scan.verdict, scan.repeats)
        if self.on_scan is not None:
            self.on_scan(scan)
        return scan

    def _judge(self, code: str, origin: str) -> Verdict:
        """Judge and record ``code`` (committed when this returns), signal and log its verdict."""
        verdict = self.counter.scan(code)
        if self.signal is not None:
            self.signal.show(verdict.reason)
        fields = policy.describe(verdict.voucher)
        event(
            log,
            "scan",
            logging.INFO if verdict.is_accepted else logging.WARNING,
            result=str(verdict.reason),
            origin=origin,
            detail=verdict.detail,
            voucher_id=fields["voucher_id"],  # ids named as on every process's log lines
            deal_id=fields["deal"],
            merchant_id=fields["merchant"],
        )
        return verdict

    def _show_health(self) -> None:
        if self.signal is None:
            return
        try:
            self.signal.set_degraded(self.counter.health().is_degraded)
        except Exception as exc:  # a busy ledger or a GPIO hiccup must not stop scanning
            event(log, "health_failed", logging.WARNING, error=str(exc))
