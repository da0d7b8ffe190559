"""The document store port: the durable record of merchants, deals and vouchers, and what the
queue workers keep (claim tallies for a deal's statistics, notices sent to customers).

The claim gate decides claims; this store remembers what was decided, for reads, audits
and for rebuilding the gate's counters. Adapters: ``mongo/`` (pymongo; indexes created
at start-up; a voucher's ``_id`` is its ``jti``) and ``sqlite/`` (the embedded profile).
Both pass ``tests/backend/test_store_contract.py``. Writes are idempotent: saving the same
voucher twice (a redelivered message) changes nothing the second time.

Times go in as aware datetimes (naive ones are taken as UTC) and come back in UTC with
millisecond precision, the precision of a BSON date: every adapter answers alike.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any, Final, Protocol, TypeVar, get_type_hints

from ..storage import TransientError


class StoreError(Exception):
    """Root of the store's errors."""


class StoreUnavailable(StoreError, TransientError):
    """The store cannot be reached now; transient, the caller answers 503 + Retry-After."""


class DuplicateError(StoreError, ValueError):
    """A record with that id already exists with other contents."""


class DealStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class MerchantRecord:
    merchant_id: str
    api_key_hash: str
    """A hash of the merchant's API key; the key itself is shown once and never stored."""
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DealRecord:
    deal_id: str
    merchant_id: str
    title: str
    stock: int
    per_user_limit: int
    voucher_ttl_seconds: int
    starts_at: datetime | None
    ends_at: datetime | None
    status: DealStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VoucherRecord:
    """One issued voucher (one successful claim). ``voucher_id`` is the token's ``jti``."""

    voucher_id: str
    deal_id: str
    merchant_id: str
    user_id: str
    idempotency_key: str
    issued_at: datetime
    expires_at: datetime


CLAIM_COUNTS: Final = ("issued", "sold_out", "limit_reached", "sale_not_open")
"""What a deal's statistics count, per minute: claims issued, and refused by outcome."""
REFUSAL_COUNTS: Final = CLAIM_COUNTS[1:]
"""The counts the claim tallies carry: issued claims are counted from the vouchers stored."""


@dataclass(frozen=True, slots=True)
class ClaimTally:
    """One ``claims.refused`` event's share of a deal's statistics: claims refused in one minute.

    Stored once per ``event_id`` (a redelivered event adds nothing), so the counts are exact."""

    event_id: str
    deal_id: str
    minute: datetime
    """The minute's start."""
    issued: int = 0
    """Always 0 now: the vouchers stored count the claims issued (``claims_by_minute``). The
    tallies earlier versions wrote, one per issued claim, keep theirs; it is not summed."""
    sold_out: int = 0
    limit_reached: int = 0
    sale_not_open: int = 0


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """A deal's claims in one minute: its vouchers issued, and its tallies' refusals summed."""

    minute: datetime
    issued: int
    sold_out: int
    limit_reached: int
    sale_not_open: int


def minute_counts(issued: dict[datetime, int], refused: dict[datetime, Sequence[int]]) -> list[MinuteCounts]:
    """The minutes with any claim, oldest first: vouchers issued per minute (UTC), and refusals
    per minute in the order of ``REFUSAL_COUNTS``."""
    nothing = (0,) * len(REFUSAL_COUNTS)
    return [
        MinuteCounts(minute, issued.get(minute, 0), *refused.get(minute, nothing))
        for minute in sorted(issued.keys() | refused.keys())
    ]


NOTICE_CHANNELS: Final = ("email", "sms")
"""The channels a customer is told on about their voucher (the notify worker's)."""


class NoticeOutcome(StrEnum):
    """How a notice taken for sending ended; one still being sent has none yet."""

    SENT = "sent"
    """The mail server or SMS provider took it."""
    REFUSED = "refused"
    """The far end refused it for good (no such mailbox, a number it will not text): never retried."""


@dataclass(frozen=True, slots=True)
class NoticeCounts:
    """A deal's notices on one channel: sent, and refused for good."""

    sent: int = 0
    refused: int = 0


def notice_counts(groups: Iterable[tuple[str, str, int]]) -> dict[str, NoticeCounts]:
    """Per channel, from a store's (channel, outcome, count) groups of one deal's notices."""
    counts: dict[str, dict[str, int]] = {}
    for channel, outcome, count in groups:
        counts.setdefault(channel, {})[NoticeOutcome(outcome).value] = int(count)
    return {channel: NoticeCounts(**counts[channel]) for channel in sorted(counts)}


@dataclass(frozen=True, slots=True)
class DealPage:
    """One page of a merchant's deals, newest first; ``next_cursor`` fetches the next page."""

    deals: list[DealRecord]
    next_cursor: str | None


class BadCursor(StoreError, ValueError):
    """A page cursor this store did not make (or one damaged on the way)."""


def deal_cursor(deal: DealRecord) -> str:
    """An opaque cursor after ``deal``: its creation time and id (the id breaks ties)."""
    text = f"{utc_ms(deal.created_at).isoformat(timespec='milliseconds')}|{deal.deal_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def parse_deal_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, deal_id) a cursor points after; ``BadCursor`` when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, deal_id = text.split("|", 1)
        return utc_ms(datetime.fromisoformat(when)), deal_id
    except (ValueError, UnicodeDecodeError):
        raise BadCursor("not a cursor this API made; use the next_cursor of the previous page") from None


def deal_page(deals: Sequence[DealRecord], limit: int) -> DealPage:
    """A page of at most ``limit`` deals from up to ``limit + 1`` fetched, with the next cursor."""
    shown = list(deals[:limit])
    return DealPage(shown, deal_cursor(shown[-1]) if len(deals) > limit and shown else None)


# --- Devices, redemptions, revocations and used device-token ids (device enrolment and sync) ---


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """An enrolled counter device: its merchant and the public key its sync tokens are checked with."""

    device_id: str
    merchant_id: str
    public_key: dict[str, str]
    """The device's public Ed25519 JWK (``kty``, ``crv``, ``x``)."""
    status: DeviceStatus
    enrolled_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RedemptionRecord:
    """A voucher accepted at a counter, as the counter uploaded it. One per voucher and device:
    the same voucher at two devices is two records (a conflict the merchant sees)."""

    voucher_id: str
    device_id: str
    merchant_id: str
    deal_id: str
    redeemed_at: datetime
    """When the counter accepted it, by the counter's trusted time."""
    received_at: datetime
    """When the backend first stored it: orders redemptions of one voucher (counter clocks may lie)."""
    user_id: str | None = None
    expires_at: datetime | None = None


def first_redemption(redemptions: Sequence[RedemptionRecord]) -> RedemptionRecord:
    """The redemption of a voucher the backend recorded first (ties broken by device id), the
    same answer however often and in whichever order it is asked."""
    return min(redemptions, key=lambda r: (utc_ms(r.received_at), r.device_id))


class RevocationKind(StrEnum):
    VOUCHER = "voucher"
    DEAL = "deal"


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """A voucher, or a whole deal, revoked after issue. ``seq`` numbers a merchant's revocations
    1, 2, 3, ... without gaps, in the order they became visible: a device's watermark."""

    merchant_id: str
    kind: RevocationKind
    target_id: str
    revoked_at: datetime
    seq: int


class DeviceRecords(Protocol):
    """The part of the store device enrolment and sync use (``devices.py``)."""

    def add_device(self, device: DeviceRecord) -> None:
        """Enrol a device; DuplicateError when the id is taken (a revoked device's too)."""

    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    def set_device_status(self, device_id: str, status: DeviceStatus, at: datetime) -> DeviceRecord | None:
        """Change a device's status (``revoked_at`` becomes ``at`` when revoked, kept when repeated);
        the updated device, or None when there is no such device."""

    def devices_of_merchant(self, merchant_id: str) -> Sequence[DeviceRecord]:
        """Every device of the merchant, revoked ones too, by device id."""

    def use_token_id(self, device_id: str, token_id: str, keep_until: datetime, now: datetime) -> bool:
        """Remember a device token's ``jti`` until ``keep_until``; False when it was already used
        (a replay). Forgets the ids whose time has passed (as of ``now``)."""

    def save_redemptions(self, redemptions: Sequence[RedemptionRecord]) -> dict[str, RedemptionRecord]:
        """Store redemptions idempotently (a voucher and device already stored is left as it
        was) and return, for each voucher of the batch, the redemption recorded first, from
        whichever device (``first_redemption``). All of one merchant."""

    def count_redemptions(self, merchant_id: str) -> int:
        """How many redemptions of the merchant are stored (one per voucher and device)."""

    def conflicts_of_merchant(
        self, merchant_id: str, limit: int, after: str | None = None
    ) -> list[list[RedemptionRecord]]:
        """Vouchers of the merchant redeemed at more than one device, by voucher id (after the
        voucher id ``after``), at most ``limit``; each its redemptions in the order recorded."""

    def add_revocation(
        self, merchant_id: str, kind: RevocationKind, target_id: str, at: datetime
    ) -> RevocationRecord:
        """Record a revocation with the merchant's next ``seq``; one already recorded for that
        target is returned as it was (revoking twice is harmless)."""

    def revocations_after(self, merchant_id: str, after: int, limit: int) -> list[RevocationRecord]:
        """The merchant's revocations with ``seq`` above ``after``, oldest first, ``limit`` at most."""

    def get_voucher(self, voucher_id: str) -> VoucherRecord | None:
        """An issued voucher by its id (known once the persist worker has stored it)."""


# --- end of the device sync block ---


# --- What the merchant reads (the API's lists and the console) and merchant sign-in ---


@dataclass(frozen=True, slots=True)
class VoucherCounts:
    """A deal's vouchers: issued (stored by the persist worker) and redeemed at any counter."""

    issued: int
    redeemed: int


@dataclass(frozen=True, slots=True)
class DeviceActivity:
    """What a counter did: its last sync (None: never synced) and the redemptions it reported."""

    device_id: str
    last_sync_at: datetime | None
    redemptions: int


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console session; the store keeps a hash of its cookie, never the cookie."""

    session_hash: str
    merchant_id: str
    expires_at: datetime


class MerchantViews(Protocol):
    """Reads for the merchant (lists, a voucher's story, counters' activity), API key rotation
    and console sessions."""

    def vouchers_page(self, deal_id: str, limit: int, after: str | None = None) -> list[VoucherRecord]:
        """The deal's vouchers by voucher id, after the voucher id ``after``, ``limit`` at most."""

    def voucher_counts(self, deal_id: str) -> VoucherCounts: ...

    def redemptions_of_voucher(self, voucher_id: str) -> list[RedemptionRecord]:
        """Every counter's redemption of a voucher, in the order recorded (``first_redemption`` first)."""

    def revocation_of(
        self, merchant_id: str, kind: RevocationKind, target_id: str
    ) -> RevocationRecord | None:
        """The merchant's revocation of that voucher or deal, or None."""

    def record_sync(self, device_id: str, at: datetime) -> None:
        """Remember that the device synced at ``at`` (a later sync replaces an earlier one)."""

    def device_activity(self, merchant_id: str) -> dict[str, DeviceActivity]:
        """The activity of each of the merchant's devices that synced or reported a redemption."""

    def rotate_api_key(self, merchant_id: str, new_key_hash: str, old_valid_until: datetime) -> bool:
        """Make ``new_key_hash`` the merchant's key; the old one still signs in until
        ``old_valid_until``. False when there is no such merchant."""

    def add_console_session(self, session: ConsoleSession) -> None: ...

    def console_session(self, session_hash: str, now: datetime) -> ConsoleSession | None:
        """The session with that hash unless it has expired (as of ``now``)."""

    def end_console_session(self, session_hash: str) -> None:
        """Sign a session out; harmless when it is gone already."""


class DocumentStore(DeviceRecords, MerchantViews, Protocol):
    def add_merchant(self, merchant: MerchantRecord) -> None:
        """Register a merchant; DuplicateError when the id is taken."""

    def merchant_for_key_hash(self, api_key_hash: str, now: datetime | None = None) -> str | None:
        """The merchant id whose API key has this hash (or whose rotated-out key it is, until its
        grace period ends, as of ``now``: default the present), or None."""

    def add_deal(self, deal: DealRecord) -> None:
        """Store a new deal; DuplicateError when the id is taken."""

    def get_deal(self, deal_id: str) -> DealRecord | None: ...

    def deals_of_merchant(self, merchant_id: str, limit: int, after: str | None = None) -> DealPage:
        """The merchant's deals, newest first (by ``created_at``, then id), ``limit`` at most,
        after the cursor ``after``; ``BadCursor`` when it is not one of ``deal_page``'s."""

    def set_deal_status(self, deal_id: str, status: DealStatus) -> DealRecord | None:
        """Change a deal's status; the updated deal, or None when there is no such deal."""

    def save_voucher(self, voucher: VoucherRecord) -> bool:
        """Record an issued voucher idempotently; True when it was new."""

    def save_vouchers(self, vouchers: Sequence[VoucherRecord]) -> list[str]:
        """Record many issued vouchers in one round trip, idempotently: one already stored the
        same way changes nothing. Returns the ids of those that exist *otherwise* (another
        voucher with that id, or another voucher for that claim): the persist worker parks them."""

    def vouchers_of_deal(self, deal_id: str) -> Sequence[VoucherRecord]:
        """Every voucher of a deal, for rebuilding the gate's counters."""

    def add_claim_tallies(self, tallies: Sequence[ClaimTally]) -> None:
        """Record each tally once, in one round trip: a tally whose event id is already
        recorded changes nothing (the analytics worker's redelivered events)."""

    def claims_by_minute(self, deal_id: str) -> list[MinuteCounts]:
        """The deal's claims per minute (UTC), oldest first, minutes without any left out: its
        vouchers stored, counted by the minute of ``issued_at``, and its tallies' refusals.
        The vouchers are the ledger of what was issued, so a claim is counted once it is
        stored, exactly once, with no document of its own for the count."""

    def claim_notice(self, voucher_id: str, channel: str, deal_id: str) -> bool:
        """Take the right to send a voucher's notice on ``channel`` (``email``, ``sms``): True
        for the first caller, False once taken (it was sent, is being sent, or was refused).
        The deal is kept with it, so that ``notices_of`` can count the deal's notices."""

    def release_notice(self, voucher_id: str, channel: str) -> None:
        """Give a taken notice back (its send failed and may be tried again); harmless when not taken."""

    def record_notice(self, voucher_id: str, channel: str, outcome: NoticeOutcome) -> None:
        """Say how a taken notice ended; harmless when it is not taken."""

    def notices_of(self, deal_id: str) -> dict[str, NoticeCounts]:
        """The deal's notices sent and refused, per channel that has any. Counted by the store
        (one aggregation on an index by deal), never row by row: the console asks every 2 s
        during a sale. A notice still being sent, or whose worker died mid-send, is in neither."""

    def check(self) -> None:
        """Prove the store answers (for ``/readyz``); StoreUnavailable when it does not."""

    def close(self) -> None: ...


Record = TypeVar("Record")
"""Any record dataclass of this module."""


def utc_ms(value: datetime) -> datetime:
    """A time as every store gives it back: UTC, whole milliseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def record_fields(record: Any) -> dict[str, Any]:
    """A record as plain values (times normalised with ``utc_ms``, enums as strings)."""
    values: dict[str, Any] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        if isinstance(value, datetime):
            value = utc_ms(value)
        elif isinstance(value, StrEnum):
            value = str(value)
        values[field.name] = value
    return values


def record_from_fields(kind: type[Record], values: Mapping[str, Any]) -> Record:
    """The inverse of ``record_fields``; extra keys (such as Mongo's ``_id``) are ignored."""
    kwargs: dict[str, Any] = {}
    for field in fields(kind):
        value = values[field.name]
        if isinstance(value, datetime):
            value = utc_ms(value)
        elif field.name in _enum_fields(kind) and value is not None:
            value = _enum_fields(kind)[field.name](value)
        kwargs[field.name] = value
    return kind(**kwargs)


@cache
def _enum_fields(kind: type) -> dict[str, type[StrEnum]]:
    """The fields of a record that hold an enum (``status``, ``kind``), with the enum's type."""
    hints = get_type_hints(kind)
    return {
        name: hint for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, StrEnum)
    }
