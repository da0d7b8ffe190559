"""The clock: a Pi without a real-time clock, set back by days, must not revive expired vouchers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.policy import ClockState
from shopcardd_device.status import status_lines, status_report
from shopcardd_voucher import KeySet, Reason

from .conftest import Keys, Mint, WriteConfig, device_command

DAY = 86_400.0


def ntp_synchronised() -> bool:
    """The system says the clock is synchronised (NTP reached)."""
    return True


class Clock:
    """The system clock as the device reads it, settable by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_clock_set_back_by_days_still_rejects_an_expired_voucher(config: DeviceConfig, mint: Mint) -> None:
    real = time.time()
    clock = Clock(real)
    with Counter.open(config, clock=clock) as counter:
        assert counter.scan(mint()).reason is Reason.ACCEPTED
    stale = mint(now=real - 2 * DAY, ttl=int(DAY))  # expired a day ago
    clock.now = real - 3 * DAY  # the clock is set back (no RTC, NTP not yet synced, or tampering)
    with Counter.open(config, clock=clock) as counter:
        assert counter.time().state is ClockState.BEHIND_FLOOR
        assert counter.scan(stale).reason is Reason.EXPIRED
        assert counter.scan(mint(now=real)).reason is Reason.ACCEPTED  # a current voucher still works
        assert not counter.health().is_degraded


def test_clock_untrusted_only_without_any_trustworthy_floor(config: DeviceConfig, mint: Mint) -> None:
    clock = Clock(0.0)  # a Pi that booted with no network: 1970
    with Counter.open(config, clock=clock) as counter:
        assert counter.scan(mint()).reason is Reason.CLOCK_UNTRUSTED
        assert counter.health().is_degraded  # steady amber
        assert counter.ledger.time_floor is None
        counter.ledger.note_sync(time.time())  # a sync brings the server's time
    with Counter.open(config, clock=clock) as counter:
        assert counter.time().state is ClockState.BEHIND_FLOOR
        assert counter.scan(mint()).reason is Reason.ACCEPTED
        assert counter.scan(mint(now=time.time() - 2 * DAY, ttl=3600)).reason is Reason.EXPIRED
        assert not counter.health().is_degraded


def test_the_floor_is_the_iat_of_vouchers_verified_and_survives_a_restart(
    config: DeviceConfig, mint: Mint
) -> None:
    real = time.time()
    clock = Clock(real)
    with Counter.open(config, clock=clock) as counter:
        counter.scan(mint(now=real + 30))  # issued by a backend whose clock runs a little ahead
        assert counter.ledger.time_floor == int(real + 30)
    clock.now = real - 10 * DAY
    with Counter.open(config, clock=clock) as counter:
        assert counter.time().now == int(real + 30)


def test_a_genuine_voucher_issued_days_ahead_does_not_brick_the_counter(
    config: DeviceConfig, mint: Mint
) -> None:
    real = time.time()
    clock = Clock(real)
    with Counter.open(config, clock=clock, synchronised=ntp_synchronised) as counter:
        ahead = mint(merchant="m-other", now=real + 2 * DAY)  # genuinely signed, iat two days ahead
        assert counter.scan(ahead).reason is Reason.WRONG_MERCHANT
        assert counter.ledger.time_floor <= real + config.leeway_seconds  # at most the grace ahead
        assert counter.scan(mint(now=real)).reason is Reason.ACCEPTED  # not "expired"
        assert counter.scan(mint(merchant="m-other", now=real + 3 * DAY)).reason is Reason.WRONG_MERCHANT
        assert counter.ledger.time_floor <= real + config.leeway_seconds  # a second one right after
    clock.now = real + 120
    with Counter.open(config, clock=clock, synchronised=ntp_synchronised) as counter:  # nor after a restart
        assert counter.time().state is ClockState.TRUSTED
        assert counter.scan(mint(now=real, ttl=600)).reason is Reason.ACCEPTED


def test_behind_the_floor_a_genuine_iat_still_raises_the_floor_as_it_is(
    config: DeviceConfig, mint: Mint
) -> None:
    real = time.time()
    clock = Clock(real)
    with Counter.open(config, clock=clock) as counter:
        counter.scan(mint(now=real))
    clock.now = 0.0  # the Pi lost its clock at boot: judged at the floor
    with Counter.open(config, clock=clock) as counter:
        assert counter.time().state is ClockState.BEHIND_FLOOR
        assert counter.scan(mint(now=real + DAY)).reason is Reason.ACCEPTED  # issued a day after the floor
        assert counter.ledger.time_floor == int(real + DAY)  # the recovery the iat rule exists for
        assert counter.scan(mint(now=real - DAY, ttl=3600)).reason is Reason.EXPIRED


def test_a_wrong_merchant_or_forged_voucher_never_moves_time(
    config: DeviceConfig, mint: Mint, keys: Keys
) -> None:
    clock = Clock(0.0)
    with Counter.open(config, clock=clock) as counter:
        assert counter.scan(mint(key=keys.forger)).reason is Reason.BAD_SIGNATURE
        assert counter.scan(mint(merchant="m-other")).reason is Reason.WRONG_MERCHANT
        assert counter.ledger.time_floor is None


def test_a_key_set_past_its_window_shows_amber_but_still_verifies_what_it_signed(
    write_config: WriteConfig, keys: Keys, mint: Mint, tmp_path: Path
) -> None:
    real = time.time()
    retired = KeySet([keys.signing.verification_key(expires=int(real - DAY))])
    (tmp_path / "old-jwks.json").write_text(retired.to_json())
    config = write_config()
    config.write_text(config.read_text().replace(str(keys.jwks), "old-jwks.json"))
    with Counter.open(DeviceConfig.load(config)) as counter:
        assert counter.health().is_degraded  # no key may sign any more: time to sync
        assert counter.scan(mint(now=real - 2 * DAY, ttl=int(4 * DAY))).reason is Reason.ACCEPTED
        assert counter.scan(mint()).reason is Reason.UNKNOWN_KEY  # signed after the key was retired


def unsynchronised() -> bool:
    """What the system says after an offline boot: the clock was restored, not synchronised."""
    return False


def test_after_days_off_a_fresh_voucher_lifts_the_floor_in_full_and_what_expired_meanwhile_is_refused(
    config: DeviceConfig, mint: Mint
) -> None:
    real = time.time()
    shutdown = real - 5 * DAY
    clock = Clock(shutdown)
    with Counter.open(config, clock=clock, synchronised=ntp_synchronised) as counter:  # its last day on
        assert counter.ledger.time_floor == shutdown
    # Five days off; fake-hwclock restores the shutdown time and there is no network yet.
    lapsed = mint(now=real - 3 * DAY, ttl=int(DAY))  # expired two days ago: valid by the restored clock
    with Counter.open(config, clock=clock, synchronised=unsynchronised) as counter:
        assert counter.time().state is ClockState.TRUSTED  # believable, and not behind the floor
        assert counter.scan(mint(now=real)).reason is Reason.ACCEPTED
        assert counter.ledger.time_floor == int(real)  # the fresh voucher's iat, in full
        assert counter.scan(lapsed).reason is Reason.EXPIRED
        clock.now = shutdown + 3600  # an hour of the wrong clock later: still no evidence
        assert counter.ledger.time_floor == int(real)


def test_a_key_set_past_its_valid_until_is_stale_shows_amber_and_still_verifies(
    config: DeviceConfig, mint: Mint, keys: Keys
) -> None:
    real = time.time()
    with Counter.open(config) as counter:
        assert not counter.health().keyset_stale  # seeded from the keyset file: no date to be past
        counter.ledger.store_keyset(
            KeySet.load(keys.jwks), real, issued_at=real - 8 * DAY, valid_until=real - DAY
        )
        assert counter.scan(mint()).reason is Reason.ACCEPTED
        health = counter.health()
        assert health.keyset_stale and health.is_degraded  # steady amber: sync the device
    assert config.source_file is not None
    status = json.loads(device_command("status", "--config", config.source_file, "--json").stdout)
    keyset = status["keyset"]
    assert keyset["stale"] is True
    assert datetime.fromisoformat(keyset["issued_at"]).timestamp() == pytest.approx(real - 8 * DAY, abs=0.001)
    assert datetime.fromisoformat(keyset["valid_until"]).timestamp() == pytest.approx(real - DAY, abs=0.001)
    assert status["degraded"] is True
    assert "STALE: sync the device" in device_command("status", "--config", config.source_file).stdout


def test_status_says_in_words_what_the_clock_state_means_for_the_merchant(
    config: DeviceConfig, mint: Mint
) -> None:
    """Not "clock trusted, not synchronised": whether the network set the clock, and what the
    counter goes by instead."""

    def clock_line(clock: Clock, synchronised: Callable[[], bool]) -> str:
        with Counter.open(config, clock=clock, synchronised=synchronised) as counter:
            lines = status_lines(status_report(counter), config)
        [line] = [line for line in lines if line.startswith("  clock ")]
        return line.split(None, 1)[1]

    real = time.time()
    clock = Clock(real)
    assert clock_line(Clock(0.0), unsynchronised) == (
        "not set by the network and no time proven yet (no sync, no voucher): time-bound vouchers are refused"
    )
    with Counter.open(config, clock=clock, synchronised=unsynchronised) as counter:
        assert counter.scan(mint(now=real)).reason is Reason.ACCEPTED  # its iat is a time proven
    assert clock_line(clock, ntp_synchronised) == "set by the network (synchronised)"
    assert clock_line(clock, unsynchronised) == (
        "not set by the network; believed because it is not behind the last time proven by a sync or "
        "a voucher"
    )
    assert clock_line(Clock(real - 10 * DAY), unsynchronised) == (
        "not set by the network and behind the last time proven by a sync or a voucher; using that time"
    )
