"""The counter: verify one scanned code against the ledger and record it. One place for both
the scan loop and ``shopcardd-device verify``, so the two can never judge differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from shopcardd_voucher import InvalidKeyError, KeySet, Verdict

from . import policy
from .closing import Closing
from .config import DeviceConfig
from .errors import ConfigError
from .ledger import Ledger
from .policy import ClockState, TrustedTime

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the device can be trusted to judge time: drives the steady amber light."""

    clock: ClockState
    keys_in_force: bool

    @property
    def is_degraded(self) -> bool:
        return self.clock is ClockState.UNTRUSTED or not self.keys_in_force


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
    """Judge and record scans for one device; ``clock`` is injectable (tests set it back)."""

    def __init__(self, config: DeviceConfig, ledger: Ledger, keys: KeySet, clock: Clock = time.time) -> None:
        self.config, self.ledger, self.keys, self.clock = config, ledger, keys, clock

    @classmethod
    def open(cls, config: DeviceConfig, clock: Clock = time.time, *, read_only: bool = False) -> Self:
        """Load the key set, open (and check) the ledger, note the clock: start-up in one call.

        ``read_only`` (``status``) writes nothing, not even the clock reading, so it also works
        on a ledger it may not write.
        """
        keys = load_keyset(config)
        if read_only:
            return cls(config, Ledger(config.ledger_path, read_only=True), keys, clock)
        make_data_dir(config)
        ledger = Ledger(config.ledger_path)
        try:
            now = clock()
            ledger.store_keyset(keys, now)
            floor = ledger.time_floor
            moment = policy.raised_floor(floor, now)
            if moment is not None and moment != floor:
                ledger.raise_floor(moment)
            trusted = policy.trusted_time(now, moment).now
            if trusted is not None:  # retention: synced rows of expired vouchers are no longer needed
                ledger.prune(trusted, config.leeway_seconds)
        except BaseException:
            ledger.close()
            raise
        return cls(config, ledger, keys, clock)

    @classmethod
    def open_dry_run(cls, config: DeviceConfig, clock: Clock = time.time) -> Self:
        """Judge without writing anything anywhere (``verify --dry-run``): the ledger is opened
        read-only when it exists; before it exists the scans are judged against an empty ledger in
        memory (nothing redeemed, nothing revoked, no time floor), and no folder or file is made."""
        keys = load_keyset(config)
        if config.ledger_path.exists():
            return cls(config, Ledger(config.ledger_path, read_only=True), keys, clock)
        return cls(config, Ledger.empty(), keys, clock)

    def close(self) -> None:
        self.ledger.close()

    def time(self) -> TrustedTime:
        """Read afresh each time: another process (``sync``, ``verify``) may have raised the floor."""
        return policy.trusted_time(self.clock(), self.ledger.time_floor)

    def health(self, now: TrustedTime | None = None) -> Health:
        """The health at ``now`` (a fresh ``time()`` when not given)."""
        if now is None:
            now = self.time()
        return Health(now.state, policy.keys_in_force(self.keys, now.now))

    def scan(self, code: str, *, record: bool = True) -> Verdict:
        """Judge ``code`` and, unless ``record`` is false (dry run), commit it before returning."""
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
