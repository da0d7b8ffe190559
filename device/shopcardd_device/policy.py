"""The counter's rules: voucher + ledger facts + trusted time -> verdict. Pure, no I/O.

An import-linter contract keeps this module free of sqlite3, requests, gpiozero and the
like, so every rule can be tested with plain values and read in one place.

The clock rule (DESIGN.md, "Clock"). A Pi has no real-time clock, so the device keeps a
*time floor* in its ledger: the latest of its own believable clock readings, the server time
of the last sync, and the ``iat`` of every genuine voucher it judged with a trusted time.
Every one of those is a moment known to have passed, so the floor never runs ahead of the
real time. The time a scan is judged at is ``max(clock, floor)``: a clock set back never
makes an expired voucher valid again.

A voucher's ``iat`` is only as good as the issuer's clock, and the floor never goes down, so
one genuine voucher issued "in the future" (a backend clock far ahead, or a signed voucher
crafted so) must not push the floor ahead of the real time: every later voucher would read
as expired. While the clock is *trusted* (believable and not behind the floor) an ``iat``
therefore raises the floor at most to ``clock + leeway`` (the grace already allowed for
``nbf``/``exp``); a clock behind the floor by no more than the leeway (where such a capped
``iat``, or a backend clock a little ahead, leaves it) still bounds it, or two future vouchers
in a row would get round the bound. Only when the clock is *behind the floor* by more (set
back, or lost at boot: the recovery the ``iat`` rule exists for) does an ``iat`` count as it is.

A clock reading counts only when it is later than ``EARLIEST_BELIEVABLE_TIME`` (the build
date of this software): a Pi that booted without network reads 1970 or a stale fake-hwclock
date. ``clock_untrusted`` is the verdict only when there is nothing to trust at all: no floor
yet and an unbelievable clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Final, Protocol

from shopcardd_voucher import (
    DEFAULT_LEEWAY_SECONDS,
    KeySet,
    Reason,
    Verdict,
    VerificationKey,
    Voucher,
    check_time,
    readable_time,
    verify,
)

EARLIEST_BELIEVABLE_TIME: Final = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
"""The build date of this release: a clock reading before it is certainly wrong. Raise at release."""

_PASSED_VOUCHER_CHECKS: Final = frozenset({Reason.ACCEPTED, Reason.EXPIRED, Reason.NOT_YET_VALID})


class ClockState(StrEnum):
    TRUSTED = "trusted"
    """The clock is believable and not behind the floor."""
    BEHIND_FLOOR = "behind_floor"
    """The clock reads earlier than the floor (set back, or lost at boot): the floor is used."""
    UNTRUSTED = "untrusted"
    """No floor and an unbelievable clock: nothing that depends on time can be judged."""


@dataclass(frozen=True, slots=True)
class TrustedTime:
    """The time a scan is judged at, and how far it can be trusted."""

    now: float | None
    state: ClockState
    clock: float
    floor: float | None


def trusted_time(clock: float, floor: float | None) -> TrustedTime:
    """Combine the system clock with the ledger's floor (see the module docstring)."""
    believable = clock >= EARLIEST_BELIEVABLE_TIME
    if floor is None:
        if believable:
            return TrustedTime(clock, ClockState.TRUSTED, clock, floor)
        return TrustedTime(None, ClockState.UNTRUSTED, clock, floor)
    if believable and clock >= floor:
        return TrustedTime(clock, ClockState.TRUSTED, clock, floor)
    return TrustedTime(floor, ClockState.BEHIND_FLOOR, clock, floor)


def raised_floor(floor: float | None, *moments: float | None) -> float | None:
    """The floor after learning that each of ``moments`` has passed (believable ones only)."""
    known = [m for m in (floor, *moments) if m is not None and m >= EARLIEST_BELIEVABLE_TIME]
    return max(known) if known else floor


def floor_after(time: TrustedTime, verdict: Verdict, leeway: float = DEFAULT_LEEWAY_SECONDS) -> float | None:
    """The floor after a scan: the clock reading, and the ``iat`` of a genuine voucher.

    A voucher's ``iat`` counts only when the scan had a time to trust: with nothing to
    trust, an old voucher shown first would otherwise vouch for its own validity. With a
    trusted clock an ``iat`` raises the floor at most to ``clock + leeway``, so a voucher
    issued in the future cannot push the floor ahead of the real time; behind the floor it
    counts as it is (see the module docstring).
    """
    if time.state is ClockState.UNTRUSTED:
        return time.floor
    issued_at: float | None = None
    if is_genuine(verdict) and verdict.voucher:
        issued_at = verdict.voucher.issued_at
        if _clock_vouches(time, leeway):
            issued_at = min(issued_at, time.clock + leeway)
    return raised_floor(time.floor, time.clock, issued_at)


def _clock_vouches(time: TrustedTime, leeway: float) -> bool:
    """Whether the clock bounds an ``iat``: it is trusted, or behind the floor by no more than the
    leeway. A capped ``iat`` itself leaves the clock up to ``leeway`` behind the floor; were that
    "behind the floor", a second future voucher shown right after the first would count in full."""
    if time.state is ClockState.TRUSTED:
        return True
    believable = time.clock >= EARLIEST_BELIEVABLE_TIME
    return believable and time.floor is not None and time.clock + leeway >= time.floor


def is_genuine(verdict: Verdict) -> bool:
    """Whether the signature verified (the voucher's claims can be believed)."""
    return verdict.voucher is not None and verdict.reason not in (Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE)


class LedgerFacts(Protocol):
    """What the policy asks the ledger; the ledger answers, the policy decides."""

    def is_revoked(self, voucher_id: str, deal: str) -> bool: ...

    def redeemed_at(self, voucher_id: str) -> float | None:
        """When the voucher was redeemed at this device (trusted time), or ``None``."""
        ...


def judge(
    token: str,
    *,
    keys: KeySet,
    merchant: str,
    facts: LedgerFacts,
    time: TrustedTime,
    leeway: float,
    tz: tzinfo | None = None,
) -> Verdict:
    """The verdict on one scanned code; its detail gives times in ``tz`` (``None``: the system's).

    Order: format, key, signature, claims, key window, merchant (the voucher module), then
    revoked, already redeemed (final whatever the time), then the clock, then ``nbf``/``exp``.
    """
    verdict = verify(token, keys, now=time.now or 0.0, leeway=leeway, merchant=merchant)
    voucher = verdict.voucher
    if voucher is None or verdict.reason not in _PASSED_VOUCHER_CHECKS:
        return verdict
    if facts.is_revoked(voucher.voucher_id, voucher.deal):
        return Verdict(Reason.REVOKED, voucher, "voucher or its deal was revoked")
    redeemed = facts.redeemed_at(voucher.voucher_id)
    if redeemed is not None:
        when = readable_time(redeemed, tz)
        return Verdict(Reason.ALREADY_REDEEMED, voucher, f"redeemed at this device {when}")
    if time.now is None:
        return Verdict(Reason.CLOCK_UNTRUSTED, voucher, "no trusted time: clock unset and never synced")
    return check_time(voucher, time.now, leeway, tz)


def keys_in_force(keys: Iterable[VerificationKey], now: float | None) -> bool:
    """Whether any key may still sign at ``now``: a key set all past its window is stale."""
    return now is not None and any(key.is_valid_at(now) for key in keys)


def describe(voucher: Voucher | None) -> dict[str, str | None]:
    """The voucher fields every answer carries (CLI line, log line, status)."""
    if voucher is None:
        return {"voucher_id": None, "deal": None, "merchant": None}
    return {"voucher_id": voucher.voucher_id, "deal": voucher.deal, "merchant": voucher.merchant}
