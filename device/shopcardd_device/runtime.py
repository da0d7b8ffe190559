"""The counter's composition root: ``DeviceConfig`` in, a wired counter out. Knows no argparse.

Every command and every bench opens its counter here (``run``, ``verify``, ``status``, ``sync``,
``shopcardd-bench device | lan | sync``), so the parts are put together one way only. A part
(decoder, frame source, panel, shop LAN node, systemd watchdog) is opened on first use and
closed with the counter, in the reverse order: ``verify`` of tokens never loads a decoder, and
``status`` never binds the LAN port. Parts are opened in ``main()`` or a bench's ``run``, never
at import.

One rule lives here and nowhere else: after a redemption (an accepted scan that was not a
repeat of the one before) the shop LAN is told, so the merchant's other counters refuse it.

    with open_counter(config, wait_for_space=True) as counter:
        counter.run(on_scan=print_scan)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Final

from .closing import Closing
from .config import DeviceConfig
from .counter import Counter
from .errors import LedgerFull
from .log import event, get_logger

if TYPE_CHECKING:
    from .decoders.base import Decoder
    from .feedback import FeedbackPanel
    from .frames.base import FrameSource
    from .lan import Lan
    from .scanner import Scan, Scanner, Signal
    from .sync import Retried, SyncReport
    from .watchdog import Watchdog

SIGNAL_DRAIN_SECONDS: Final = 15.0
"""At the end of ``run``: how long the last verdict's pattern may take to be seen."""
SPACE_WAIT_SECONDS: Final = (1.0, 30.0)
"""A counter on a disk too full to open the ledger: the first pause before trying again, the longest."""

log = get_logger("run")

OnScan = Callable[["Scan"], None]


def is_redemption(scan: Scan) -> bool:
    """Whether a scan redeemed a voucher just now: accepted, and not a repeat of a code held in view
    (debounce answered that from memory; nothing new was recorded)."""
    return scan.verdict.is_accepted and not scan.repeated


class Runtime(Closing):
    """One device's counter and the parts around it, each opened on first use; ``close()`` closes
    them all, the counter's ledger last."""

    def __init__(
        self,
        config: DeviceConfig,
        counter: Counter,
        *,
        on_lan_record: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config, self.counter = config, counter
        self._on_lan_record = on_lan_record
        self._stack = contextlib.ExitStack()
        self._stack.callback(counter.close)

    @cached_property
    def decoder(self) -> Decoder:
        """The configured QR decoder (``verify`` of an image; the scan loop unless a keyboard
        scanner types the code itself)."""
        from .decoders import open_decoder  # numpy and the vendor library only when frames are decoded

        decoder = open_decoder(self.config.decoder.name, try_invert=self.config.decoder.try_invert)
        self._stack.callback(decoder.close)
        return decoder

    @cached_property
    def watchdog(self) -> Watchdog:
        from .watchdog import Watchdog

        return self._stack.enter_context(Watchdog.from_environment())

    @cached_property
    def source(self) -> FrameSource:
        from .frames import open_source

        return self._stack.enter_context(open_source(self.config.camera))

    @cached_property
    def panel(self) -> FeedbackPanel:
        from .feedback import FeedbackPanel

        gpio = self.config.gpio
        panel = FeedbackPanel(gpio.accept, gpio.reject, gpio.buzzer, signal_seconds=gpio.signal_seconds)
        return self._stack.enter_context(panel)

    @cached_property
    def lan(self) -> Lan | None:
        """The started shop LAN node, or none (``[lan]`` off, not enrolled, the port taken: logged)."""
        from .lan import open_lan

        lan = open_lan(self.config, on_record=self._on_lan_record)
        if lan is not None:
            self._stack.callback(lan.close)
        return lan

    def scanner(
        self,
        source: FrameSource,
        decoder: Decoder | None,
        *,
        signal: Signal | None = None,
        on_scan: OnScan | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> Scanner:
        """A scan loop over this counter; after each scan (committed and signalled) a redemption is
        told to the shop LAN, then ``on_scan`` is called."""
        from .scanner import Scanner

        lan = self.lan

        def after_scan(scan: Scan) -> None:
            if lan is not None and is_redemption(scan):
                lan.announce()  # only wakes the node: the LAN sends off the scan thread
            if on_scan is not None:
                on_scan(scan)

        return Scanner(
            source,
            decoder,
            self.counter,
            signal,
            debounce_seconds=self.config.decoder.debounce_seconds,
            on_scan=after_scan,
            heartbeat=heartbeat,
        )

    def run(self, on_scan: OnScan | None = None) -> None:
        """The scan loop as the verifier unit runs it, until the frame source ends (``files``) or
        KeyboardInterrupt; systemd hears it is ready, and the loop feeds the watchdog."""
        decoder = None if self.config.camera.source == "keyboard" else self.decoder
        watchdog = self.watchdog
        scanner = self.scanner(
            self.source, decoder, signal=self.panel, on_scan=on_scan, heartbeat=watchdog.feed
        )
        watchdog.ready(feeding=self.config.camera.source != "keyboard")  # a scanner waits on a person
        scanner.run()
        watchdog.stopping()
        self.panel.wait_for_idle(SIGNAL_DRAIN_SECONDS)  # let the last verdict be seen

    def sync(self, *, tries: int | None = None, on_retry: Retried | None = None) -> SyncReport:
        """One sync of this counter's ledger with the backend (``SyncFailed``: it failed)."""
        from .sync import TRIES, sync

        tries = TRIES if tries is None else tries
        return sync(self.config, self.counter.ledger, tries=tries, on_retry=on_retry)

    def close(self) -> None:
        self._stack.close()


def open_counter(
    config: DeviceConfig,
    *,
    read_only: bool = False,
    dry_run: bool = False,
    wait_for_space: bool = False,
    on_lan_record: Callable[[str, int], None] | None = None,
) -> Runtime:
    """The counter of ``config``, its ledger open: ``read_only`` writes nothing (``status``);
    ``dry_run`` writes nothing and makes no file (``verify --dry-run``); ``wait_for_space`` waits
    while the disk is too full to open the ledger (``run``)."""
    if dry_run:
        counter = Counter.open_dry_run(config)
    elif wait_for_space:
        counter = open_when_there_is_space(config)
    else:
        counter = Counter.open(config, read_only=read_only)
    return Runtime(config, counter, on_lan_record=on_lan_record)


def open_when_there_is_space(config: DeviceConfig, sleep: Callable[[float], object] = time.sleep) -> Counter:
    """Open the counter, waiting while the disk is too full for SQLite to open the ledger at all
    (its shared-memory file needs space): exiting would stop the unit for good, and nothing can be
    accepted meanwhile either way. A ``ledger_full`` line says so at each try."""
    pause, longest = SPACE_WAIT_SECONDS
    while True:
        try:
            return Counter.open(config)
        except LedgerFull as exc:
            event(log, "ledger_full", logging.ERROR, error=str(exc), retry_seconds=pause)
        sleep(pause)
        pause = min(longest, pause * 2)
