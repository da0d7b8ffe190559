"""The counter's rules: voucher + ledger facts + trusted time -> verdict. Pure, no I/O.

An import-linter contract keeps this module free of sqlite3, requests, gpiozero and the
like, so every rule can be tested with plain values and read in one place.

The clock rule (docs/architecture.md, "Flow 2: a scan"). A Pi has no real-time clock, and after
an offline boot its clock reads whatever fake-hwclock or timesyncd saved at the last shutdown:
believable, but maybe days behind. So the device keeps a *time floor* in its ledger, raised by
evidence that a moment has passed:

- the server time of a sync, the strongest: it *sets* the floor, down as well as up, so it
  also corrects a floor pushed ahead (the ledger applies it, ``Ledger.apply_sync``);
- the clock's own reading, but only while the system says the clock is synchronised
  (``TrustedTime.synchronised``; ``shopcardd_device.clock`` asks the kernel): a clock restored
  days behind, or set far ahead by hand, is no evidence of anything;
- the ``iat`` of every genuine voucher. While the clock is synchronised an ``iat`` raises the
  floor at most to ``clock + leeway`` (one voucher issued "in the future" must not push the
  floor ahead and make every later voucher ``expired``); while it is not, the ``iat`` counts
  in full, since it is then the best evidence of the time there is: one fresh voucher after
  an offline boot lifts the floor to the real time, and vouchers that expired while the Pi was
  off are refused from then on. A floor that an ``iat`` pushed ahead is set right by the next
  sync.

The time a scan is judged at is ``max(clock, floor)``: a clock set back never makes an expired
voucher valid again. A clock reading before ``EARLIEST_BELIEVABLE_TIME`` (the build date of
this software) is certainly wrong; ``clock_untrusted`` is the verdict only when there is
nothing to trust at all: no floor yet and such a clock. A voucher's ``iat`` does not count
then either, or an old voucher shown first would vouch for itself.
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
    synchronised: bool = False
    """Whether the system said the clock is synchronised: only then is its reading evidence."""


def trusted_time(clock: float, floor: float | None, synchronised: bool = False) -> TrustedTime:
    """Combine the system clock with the ledger's floor (see the module docstring)."""
    believable = clock >= EARLIEST_BELIEVABLE_TIME
    if floor is None:
        if believable:
            return TrustedTime(clock, ClockState.TRUSTED, clock, floor, synchronised)
        return TrustedTime(None, ClockState.UNTRUSTED, clock, floor, synchronised)
    if believable and clock >= floor:
        return TrustedTime(clock, ClockState.TRUSTED, clock, floor, synchronised)
    return TrustedTime(floor, ClockState.BEHIND_FLOOR, clock, floor, synchronised)


def clock_evidence(time: TrustedTime) -> float | None:
    """The clock's reading as evidence for the floor: only while the system says it is synchronised."""
    return time.clock if time.synchronised else None


def raised_floor(floor: float | None, *moments: float | None) -> float | None:
    """The floor after learning that each of ``moments`` has passed (believable ones only)."""
    known = [m for m in (floor, *moments) if m is not None and m >= EARLIEST_BELIEVABLE_TIME]
    return max(known) if known else floor


def floor_after(time: TrustedTime, verdict: Verdict, leeway: float = DEFAULT_LEEWAY_SECONDS) -> float | None:
    """The floor after a scan: the synchronised clock's reading, and the ``iat`` of a genuine voucher.

    A voucher's ``iat`` counts only when the scan had a time to trust: with nothing to
    trust, an old voucher shown first would otherwise vouch for its own validity. With a
    synchronised clock an ``iat`` raises the floor at most to ``clock + leeway``, so a voucher
    issued in the future cannot push the floor ahead of the real time; with a clock the system
    does not call synchronised it counts in full (see the module docstring).
    """
    if time.state is ClockState.UNTRUSTED:
        return time.floor
    issued_at: float | None = None
    if is_genuine(verdict) and verdict.voucher:
        issued_at = verdict.voucher.issued_at
        if time.synchronised:
            issued_at = min(issued_at, time.clock + leeway)
    return raised_floor(time.floor, clock_evidence(time), issued_at)


def is_genuine(verdict: Verdict) -> bool:
    """Whether the signature verified (the voucher's claims can be believed)."""
    return verdict.voucher is not None and verdict.reason not in (Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE)


class LedgerFacts(Protocol):
    """What the policy asks the ledger; the ledger answers, the policy decides."""

    def is_revoked(self, voucher_id: str, deal: str) -> bool: ...

    def redeemed_at(self, voucher_id: str) -> float | None:
        """When the voucher was redeemed at this device (trusted time), or ``None``."""
        ...


class PeerFacts(Protocol):
    """What the policy asks of the other counters' redemptions, as the shop LAN brought them."""

    def redeemed_by_peer(self, voucher_id: str) -> tuple[str, float] | None:
        """The counter that redeemed the voucher and when (its trusted time), or ``None``."""
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
    peers: PeerFacts | None = None,
) -> Verdict:
    """The verdict on one scanned code; its detail gives times in ``tz`` (``None``: the system's).
    A voucher another counter redeemed (``peers``) is ``already_redeemed`` as one redeemed here,
    its detail naming that counter.

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
    elsewhere = peers.redeemed_by_peer(voucher.voucher_id) if peers is not None else None
    if elsewhere is not None:
        device, moment = elsewhere
        return Verdict(
            Reason.ALREADY_REDEEMED, voucher, f"redeemed at counter {device} {readable_time(moment, tz)}"
        )
    if time.now is None:
        return Verdict(Reason.CLOCK_UNTRUSTED, voucher, "no trusted time: clock unset and never synced")
    return check_time(voucher, time.now, leeway, tz)


def keys_in_force(keys: Iterable[VerificationKey], now: float | None) -> bool:
    """Whether any key may still sign at ``now``: a key set all past its window is stale."""
    return now is not None and any(key.is_valid_at(now) for key in keys)


def keyset_is_stale(valid_until: float | None, now: float | None) -> bool:
    """Whether the key set is past the ``valid_until`` its last sync gave (``None``: a key set
    seeded from the ``keyset`` file, which says nothing of its freshness). The counter keeps
    verifying with a stale key set; it only says it needs a sync."""
    return valid_until is not None and now is not None and now > valid_until


def describe(voucher: Voucher | None) -> dict[str, str | None]:
    """The voucher fields every answer carries (CLI line, log line, status)."""
    if voucher is None:
        return {"voucher_id": None, "deal": None, "merchant": None}
    return {"voucher_id": voucher.voucher_id, "deal": voucher.deal, "merchant": voucher.merchant}
