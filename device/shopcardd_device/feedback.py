"""The feedback panel: a green ``accept`` LED, a red ``reject`` LED and a buzzer.

A gpiozero ``CompositeDevice`` of named devices, like ``TrafficLights``. Hardware is reached
only through gpiozero's pin factory (``GPIOZERO_PIN_FACTORY``: ``lgpio`` on the Pi, ``mock``
off it; tests pass a ``MockFactory``). Each verdict has a pattern a cashier can tell apart
without reading anything:

- accepted: green for the signal time, one short beep;
- already used: three red flashes, three short beeps;
- any other rejection: red for the signal time, one long beep;
- a scan the device could not record (ledger locked, disk full): both LEDs flash twice
  with two long beeps, and no verdict: the customer scans again; if it repeats, the
  device needs an operator (the log says why);
- steady amber (both LEDs) between scans while the clock cannot be trusted, no key in
  the key set is in force any more, or the key set is stale (past its ``valid_until``).

Patterns play one after another on a worker thread, so the scan loop never waits for a
light; at most ``MAX_PENDING`` wait their turn (a burst of scans does not queue forever).
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Final

from gpiozero import (
    LED,
    BadPinFactory,
    Buzzer,
    CompositeDevice,
    Device,
    GPIOZeroError,
    PinFactoryFallback,
)
from gpiozero.pins import Factory

from shopcardd_voucher import Reason

from .errors import SignalError

MAX_PENDING: Final = 2


@dataclass(frozen=True, slots=True)
class Step:
    """One moment of a pattern: what is on, for what share of the signal time."""

    accept: bool
    reject: bool
    buzzer: bool
    share: float


_ACCEPTED: Final = (Step(True, False, True, 0.15), Step(True, False, False, 0.85))
_ALREADY_USED: Final = (Step(False, True, True, 0.12), Step(False, False, False, 0.1)) * 3 + (
    Step(False, False, False, 0.04),
)
_REJECTED: Final = (Step(False, True, True, 0.6), Step(False, True, False, 0.4))
_FAULT: Final = (Step(True, True, True, 0.3), Step(False, False, False, 0.2)) * 2


def pattern_for(reason: Reason) -> tuple[Step, ...]:
    """The light-and-sound pattern of a verdict."""
    if reason is Reason.ACCEPTED:
        return _ACCEPTED
    if reason is Reason.ALREADY_REDEEMED:
        return _ALREADY_USED
    return _REJECTED


def describe_pattern(reason: Reason) -> str:
    """What a cashier sees and hears, for the readable output of ``run``."""
    if reason is Reason.ACCEPTED:
        return "green light, one short beep"
    if reason is Reason.ALREADY_REDEEMED:
        return "three red flashes, three short beeps"
    return "red light, one long beep"


class FeedbackPanel(CompositeDevice):
    """Green and red LEDs and a buzzer that show each verdict; amber (both LEDs) when degraded."""

    accept: LED
    reject: LED
    buzzer: Buzzer

    def __init__(
        self,
        accept: int | str = 17,
        reject: int | str = 27,
        buzzer: int | str = 22,
        *,
        signal_seconds: float = 1.0,
        pin_factory: Factory | None = None,
    ) -> None:
        devices: list[LED | Buzzer] = []
        pins = {"accept": accept, "reject": reject, "buzzer": buzzer}  # named as the [gpio] settings
        # Which pin library: none chosen means gpiozero guesses, and off the Pi every guess fails.
        factory_chosen = (
            pin_factory is not None
            or Device.pin_factory is not None
            or bool(os.environ.get("GPIOZERO_PIN_FACTORY"))
        )
        try:
            with warnings.catch_warnings(record=True) as fallbacks:  # gpiozero tries each pin library
                warnings.simplefilter("always", PinFactoryFallback)
                for kind, pin in zip((LED, LED, Buzzer), pins.values(), strict=True):
                    devices.append(kind(pin, pin_factory=pin_factory))
            super().__init__(
                accept=devices[0],
                reject=devices[1],
                buzzer=devices[2],
                _order=("accept", "reject", "buzzer"),
                pin_factory=pin_factory,
            )
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            for device in devices:
                device.close()
            if len(devices) < len(pins) and not isinstance(exc, BadPinFactory):  # this pin, not the factory
                role = list(pins)[len(devices)]
                raise SignalError(f"[gpio] {role}: cannot drive pin {pins[role]!r} ({exc})") from exc
            tried = "; ".join(str(w.message) for w in fallbacks)
            hint = "" if factory_chosen else "; off the Pi set GPIOZERO_PIN_FACTORY=mock"
            raise SignalError(
                f"cannot drive the LEDs and buzzer ({exc}{': ' + tried if tried else ''}){hint}"
            ) from exc
        for fallback in fallbacks:  # worked in the end: still say which pin library was skipped
            warnings.warn_explicit(fallback.message, fallback.category, fallback.filename, fallback.lineno)
        self.signal_seconds = signal_seconds
        self._degraded = False
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[Step, ...] | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._worker = threading.Thread(target=self._play_patterns, name="feedback-panel", daemon=True)
        self._worker.start()

    @property
    def is_degraded(self) -> bool:
        return self._degraded

    def set_degraded(self, degraded: bool) -> None:
        """Show (or clear) the steady amber of a device that cannot fully trust its judgement."""
        if degraded != self._degraded:
            self._degraded = degraded
            with self._idle:
                if not self._pending:
                    self._show_idle()

    def show(self, reason: Reason) -> None:
        """Play the pattern of ``reason`` (after any pattern already playing)."""
        self._play(pattern_for(reason))

    def show_fault(self) -> None:
        """Tell the cashier a scan was not recorded (and so not accepted): scan again."""
        self._play(_FAULT)

    def _play(self, pattern: tuple[Step, ...]) -> None:
        with self._idle:
            if self._pending > MAX_PENDING:
                return  # a burst of scans: the verdicts already waiting say enough
            self._pending += 1
        self._queue.put(pattern)

    def wait_for_idle(self, timeout: float | None = None) -> bool:
        """Block until every pattern asked for has been played; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def _show_idle(self) -> None:
        self.accept.value = self.reject.value = self._degraded
        self.buzzer.off()

    def _play_patterns(self) -> None:
        while (pattern := self._queue.get()) is not None:
            for step in pattern:
                self.accept.value = step.accept
                self.reject.value = step.reject
                self.buzzer.value = step.buzzer
                if self._stop.wait(step.share * self.signal_seconds):
                    return
            with self._idle:
                self._pending -= 1
                if not self._pending:
                    self._show_idle()
                    self._idle.notify_all()

    def close(self) -> None:
        if getattr(self, "_worker", None) is not None and self._worker.is_alive():
            self._stop.set()
            self._queue.put(None)
            self._worker.join()
        super().close()
