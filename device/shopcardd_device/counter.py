"""The counter: verify one scanned code against the ledger and record it. One place for both
the scan loop and ``shopcardd-device verify``, so the two can never judge differently.

The key set comes from the ledger, the device's one source of keys: the ``keyset`` file only
seeds a ledger that has none. Before each scan the counter asks the ledger whether the key set
changed (one small read), so a running scan loop verifies with what ``shopcardd-device sync``
stored, without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from shopcardd_voucher import InvalidKeyError, KeySet, Verdict

from . import policy
from .clock import Synchronised, system_clock_synchronised
from .closing import Closing
from .config import DeviceConfig
from .errors import ConfigError, LedgerFull
from .ledger import Ledger, StoredKeys
from .log import event, get_logger
from .policy import ClockState, TrustedTime

log = get_logger("counter")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the device can be trusted to judge time and keys: drives the steady amber light."""

    clock: ClockState
    keys_in_force: bool
    keyset_stale: bool = False
    """Past the key set's ``valid_until``: verification goes on, but the device needs a sync."""

    @property
    def is_degraded(self) -> bool:
        return self.clock is ClockState.UNTRUSTED or not self.keys_in_force or self.keyset_stale


def load_keyset(config: DeviceConfig) -> KeySet:
    """The configured key set; whatever the file holds (binary, broken JSON, a folder), the
    operator gets one line naming ``keyset``, never a traceback."""
    try:
        keys = KeySet.load(config.keyset)  # a file it cannot read or decode is an InvalidKeyError too
    except InvalidKeyError as exc:
        raise ConfigError(f"keyset: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"keyset: cannot load {config.keyset}: {exc}") from None
    if not len(keys):
        raise ConfigError(f"keyset: {config.keyset} holds no keys")
    return keys


def make_data_dir(config: DeviceConfig) -> None:
    """Make ``data_dir``; a file in its place is named as such, not as "File exists"."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data_dir: {config.data_dir} is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot create {config.data_dir}: {exc.strerror}") from None


class Counter(Closing):
    """Judge and record scans for one device; ``clock`` and ``synchronised`` are injectable (tests
    set the clock back and say whether the system calls it synchronised)."""

    def __init__(
        self,
        config: DeviceConfig,
        ledger: Ledger,
        keys: KeySet | StoredKeys,
        clock: Clock = time.time,
        synchronised: Synchronised = system_clock_synchronised,
    ) -> None:
        self.config, self.ledger, self.clock, self.synchronised = config, ledger, clock, synchronised
        stored = keys if isinstance(keys, StoredKeys) else StoredKeys(keys, -1, None, None)
        self._use(stored)

    def _use(self, stored: StoredKeys) -> None:
        self.keys, self.keys_version = stored.keys, stored.version
        self.keyset_issued_at, self.keyset_valid_until = stored.issued_at, stored.valid_until

    def refresh_keys(self) -> bool:
        """Take up a key set another process (``sync``) stored; return whether it changed."""
        if self.keys_version < 0 or self.ledger.keyset_version() == self.keys_version:
            return False
        stored = self.ledger.stored_keys()
        if stored is None:
            return False
        self._use(stored)
        return True

    @classmethod
    def open(
        cls,
        config: DeviceConfig,
        clock: Clock = time.time,
        *,
        read_only: bool = False,
        synchronised: Synchronised = system_clock_synchronised,
    ) -> Self:
        """Open (and check) the ledger, seed its key set from the ``keyset`` file when it has none,
        note a synchronised clock's reading: start-up in one call.

        ``read_only`` (``status``) writes nothing, not even the clock reading, so it also works
        on a ledger it may not write. Nothing is deleted here: synced rows go only at a sync, by
        the server's time (``Ledger.apply_sync``).
        """
        if read_only:
            ledger = Ledger(config.ledger_path, read_only=True, device_id=config.device_id)
            return cls(config, ledger, _keys_of(config, ledger), clock, synchronised)
        make_data_dir(config)
        ledger = Ledger(config.ledger_path, max_rejections=config.max_rejections, device_id=config.device_id)
        try:
            now = clock()
            if ledger.keyset_version() == 0:
                ledger.seed_keyset(load_keyset(config), now)
            moment = policy.raised_floor(ledger.time_floor, now if synchronised() else None)
            if moment is not None and moment != ledger.time_floor:
                _note_floor(ledger, moment)
            keys = _keys_of(config, ledger)
        except BaseException:
            ledger.close()
            raise
        return cls(config, ledger, keys, clock, synchronised)

    @classmethod
    def open_dry_run(
        cls,
        config: DeviceConfig,
        clock: Clock = time.time,
        synchronised: Synchronised = system_clock_synchronised,
    ) -> Self:
        """Judge without writing anything anywhere (``verify --dry-run``): the ledger is opened
        read-only when it exists; before it exists the scans are judged against an empty ledger in
        memory (nothing redeemed, nothing revoked, no time floor), and no folder or file is made."""
        if config.ledger_path.exists():
            return cls.open(config, clock, read_only=True, synchronised=synchronised)
        return cls(config, Ledger.empty(), load_keyset(config), clock, synchronised)

    def close(self) -> None:
        self.ledger.close()

    def time(self) -> TrustedTime:
        """Read afresh each time: another process (``sync``, ``verify``) may have moved the floor."""
        return policy.trusted_time(self.clock(), self.ledger.time_floor, self.synchronised())

    def health(self, now: TrustedTime | None = None) -> Health:
        """The health at ``now`` (a fresh ``time()`` when not given), with the key set in force now."""
        self.refresh_keys()
        if now is None:
            now = self.time()
        return Health(
            now.state,
            policy.keys_in_force(self.keys, now.now),
            policy.keyset_is_stale(self.keyset_valid_until, now.now),
        )

    def scan(self, code: str, *, record: bool = True) -> Verdict:
        """Judge ``code`` and, unless ``record`` is false (dry run), commit it before returning."""
        self.refresh_keys()
        now = self.time()
        verdict = self.judge(code, now)
        return self.commit(code, verdict, now) if record else verdict

    def judge(self, code: str, now: TrustedTime) -> Verdict:
        """The verdict on ``code`` at ``now``, recording nothing (the first half of ``scan``)."""
        return policy.judge(
            code,
            keys=self.keys,
            merchant=self.config.merchant_id,
            facts=self.ledger,
            time=now,
            leeway=self.config.leeway_seconds,
            tz=self.config.timezone,
            peers=self.ledger,
        )

    def commit(self, code: str, verdict: Verdict, now: TrustedTime) -> Verdict:
        """Record ``verdict`` (and the floor it raises) durably; the final verdict (the second half
        of ``scan``)."""
        floor = policy.floor_after(now, verdict, self.config.leeway_seconds)
        return self.ledger.record(
            verdict,
            raw=code,
            device_id=self.config.device_id,
            scanned_at=now.now,
            clock_at=now.clock,
            time_floor=floor if floor != now.floor else None,
        )


def _note_floor(ledger: Ledger, moment: float) -> None:
    """Raise the floor at start-up if the disk lets us: on a full disk the counter still starts, so
    it refuses each scan with the fault signal and records again once space returns (every
    recorded scan raises the floor in its own transaction); a counter that exited instead would
    stay down."""
    try:
        ledger.raise_floor(moment)
    except LedgerFull as exc:
        event(log, "ledger_full", logging.ERROR, error=str(exc))


def _keys_of(config: DeviceConfig, ledger: Ledger) -> StoredKeys | KeySet:
    """The ledger's key set; the ``keyset`` file only for a ledger that holds none (read-only)."""
    return ledger.stored_keys() or load_keyset(config)
