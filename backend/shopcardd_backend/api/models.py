"""Request and response bodies: one model per purpose, so no stored-only field leaks out.

Request models are strict: ``"stock": "5"`` or ``"stock": true`` is a 422, not a stock of 5
or 1 (pydantic's lax mode would coerce them). Times are RFC 3339 strings only (lax mode would
also take a number as a Unix time).
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from shopcardd_voucher import MAX_VOUCHER_LIFETIME_SECONDS

from ..deals import DealPhase, DealView
from ..devices import MAX_REDEMPTIONS_PER_SYNC
from ..merchants import MAX_KEY_GRACE_SECONDS, Counter, VoucherStory
from ..stats import DealStats
from ..stores.base import DeviceStatus, VoucherRecord

EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
TIME_RANGE = "from 2000-01-01T00:00:00Z to 9999-12-31T23:59:59Z (in UTC)"
ENDS_AT_GRACE: Final = timedelta(seconds=60)
"""How far in the past a new deal's ``ends_at`` may lie: the merchant's clock may run behind ours."""


def _utc(value: datetime) -> datetime:
    """UTC, whole seconds: the claim gate decides on epoch seconds, and stores keep no more.

    Bounded to years 2000 to 9999 in UTC: an offset can carry a time written in year 9999 (or 1)
    past what a datetime holds, and every time must fit the gate's epoch seconds, a BSON date
    and the SQLite store's ISO text alike."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"must be {TIME_RANGE}") from None
    if not EARLIEST_TIME <= utc.replace(microsecond=0) <= LATEST_TIME:
        raise ValueError(f"must be {TIME_RANGE}")
    return utc.replace(microsecond=0)


def _rfc3339_text(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string, such as 2026-12-01T09:00:00Z")
    return value


def _printable(value: str) -> str:
    """No control characters, not blank: a title is shown on screens and receipts, and logged."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be blank: give the deal a title a customer can read")
    return value


# JSON carries date-times as strings, which strict mode refuses, so these fields are lax for
# the parsing only, after the check that the value is a string.
UtcDatetime = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_text), Field(strict=False), AfterValidator(_utc)
]
STRICT_REQUEST = ConfigDict(extra="forbid", strict=True)


class DealCreate(BaseModel):
    """What a merchant sends to start a sale; the merchant comes from the API key."""

    model_config = STRICT_REQUEST

    title: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
    stock: int = Field(gt=0, le=10_000_000)
    per_user_limit: int = Field(gt=0, le=1_000)
    voucher_ttl_seconds: int = Field(gt=0, le=MAX_VOUCHER_LIFETIME_SECONDS)  # what counters accept
    starts_at: UtcDatetime | None = None
    ends_at: UtcDatetime | None = None

    @field_validator("voucher_ttl_seconds", mode="wrap")
    @classmethod
    def _ttl_in_days(cls, value: object, handler: ValidatorFunctionWrapHandler) -> int:
        """The bound in days, the unit a merchant thinks in, rather than 31622400 seconds."""
        try:
            return int(handler(value))
        except ValidationError as exc:
            if any(error["type"] == "less_than_equal" for error in exc.errors()):
                days = MAX_VOUCHER_LIFETIME_SECONDS // 86_400
                raise ValueError(
                    f"must be at most {days} days ({MAX_VOUCHER_LIFETIME_SECONDS} seconds): "
                    "the counters refuse a voucher that lives longer"
                ) from None
            raise

    @field_validator("ends_at")
    @classmethod
    def _ends_in_the_future(cls, ends_at: datetime | None, info: ValidationInfo) -> datetime | None:
        """A sale that ends before it starts, or has already ended, could never sell a voucher:
        every claim would be ``sale_not_open``, so the merchant hears it now, naming the field."""
        if ends_at is None:
            return None
        starts_at = info.data.get("starts_at")
        if starts_at is not None and ends_at <= starts_at:
            raise ValueError(f"must be after starts_at ({_rfc3339(starts_at)})")
        now = datetime.now(UTC).replace(microsecond=0)
        if ends_at < now - ENDS_AT_GRACE:
            raise ValueError(f"is in the past (now is {_rfc3339(now)}): the sale would never open")
        return ends_at


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class DealPublic(BaseModel):
    deal_id: str
    merchant_id: str
    title: str
    stock: int
    stock_left: int | None
    """Vouchers left to claim (``null`` in a list for a deal the claim gate lost)."""
    per_user_limit: int
    voucher_ttl_seconds: int
    starts_at: datetime | None
    ends_at: datetime | None
    status: DealPhase
    """``scheduled`` (before ``starts_at``), ``active``, ``sold_out`` (no stock left), ``ended``
    (from ``ends_at`` on) or ``cancelled``, as of the answer."""

    @classmethod
    def of(cls, view: DealView) -> DealPublic:
        deal = view.deal
        return cls(
            deal_id=deal.deal_id,
            merchant_id=deal.merchant_id,
            title=deal.title,
            stock=deal.stock,
            stock_left=view.stock_left,
            per_user_limit=deal.per_user_limit,
            voucher_ttl_seconds=deal.voucher_ttl_seconds,
            starts_at=deal.starts_at,
            ends_at=deal.ends_at,
            status=view.phase,
        )


class DealList(BaseModel):
    deals: list[DealPublic]
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next (older) page; ``null`` on the last page."""


class ClaimCounts(BaseModel):
    issued: int
    """Vouchers issued."""
    sold_out: int
    """Claims refused: no vouchers left."""
    limit_reached: int
    """Claims refused: the customer already held ``per_user_limit`` vouchers."""
    sale_not_open: int
    """Claims refused: before ``starts_at``, from ``ends_at`` on, or cancelled."""


class MinuteClaims(ClaimCounts):
    minute: datetime
    """The minute's start, in UTC."""


class NoticesSent(BaseModel):
    sent: int
    """Notices the mail server or SMS provider took."""
    refused: int
    """Notices it refused for good (no such mailbox, a number it will not text)."""


class DealStatsPublic(BaseModel):
    deal_id: str
    minutes: list[MinuteClaims]
    """Minutes with any claim, oldest first."""
    totals: ClaimCounts
    notices: dict[str, NoticesSent]
    """The customers' notices about their vouchers, per channel (``email``, ``sms``)."""

    @classmethod
    def of(cls, stats: DealStats) -> DealStatsPublic:
        return cls(
            deal_id=stats.deal_id,
            minutes=[MinuteClaims.model_validate(minute, from_attributes=True) for minute in stats.minutes],
            totals=ClaimCounts(**stats.totals),
            notices={
                channel: NoticesSent.model_validate(counts, from_attributes=True)
                for channel, counts in stats.notices.items()
            },
        )


class ClaimCreate(BaseModel):
    """A claim carries nothing in its body (``{}`` or none): the deal is in the path, the user
    in the bearer token, the retry identity in the ``Idempotency-Key`` header."""

    model_config = STRICT_REQUEST


class VoucherPublic(BaseModel):
    voucher_id: str
    token: str
    """The signed voucher (compact JWS) to show as a QR code at the counter."""
    deal_id: str
    merchant_id: str
    expires_at: datetime


class ProblemDocument(BaseModel):
    """RFC 9457 problem document (``application/problem+json``), for the OpenAPI schema."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str


class JWKS(BaseModel):
    keys: list[dict[str, object]]


class OutboxState(BaseModel):
    """What waits in the outbox for ``shopcardd-backend relay`` (RabbitMQ named)."""

    events: int
    oldest_seconds: float


class Health(BaseModel):
    status: str
    profile: str | None = None
    outbox: OutboxState | None = None
    detail: str | None = None
    """A warning that leaves the process ready: no relay drains the outbox."""


# --- Devices: enrolment, sync, conflicts, voucher revocation (device enrolment and sync) ---


def _instant_text(value: datetime) -> str:
    """RFC 3339 in UTC, with milliseconds only when there are any: ``2026-12-01T13:05:09Z``."""
    text = value.astimezone(UTC).isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


Instant = Annotated[datetime, PlainSerializer(_instant_text, return_type=str)]
"""A time in an answer about devices: RFC 3339, UTC, ``Z``."""
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
"""A voucher, deal or user id as a counter uploads it: 1 to 64 printable ASCII characters."""
DeviceIdentifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class DeviceCreate(BaseModel):
    """Enrol a counter: its id and the public half of its Ed25519 key (a JWK)."""

    model_config = STRICT_REQUEST

    device_id: DeviceIdentifier
    public_key: dict[str, str] = Field(max_length=8)
    """``{"kty": "OKP", "crv": "Ed25519", "x": ...}``; a private member (``d``) is refused."""
    merchant_id: str | None = Field(default=None, max_length=64)
    """Optional: the merchant the enrolment is meant for; refused (403) unless it is the key's."""


class DevicePublic(BaseModel):
    device_id: str
    merchant_id: str
    public_key: dict[str, str]
    status: DeviceStatus
    enrolled_at: Instant
    revoked_at: Instant | None


class RedemptionUpload(BaseModel):
    """One redemption the counter recorded."""

    model_config = STRICT_REQUEST

    voucher_id: Identifier
    deal_id: Identifier
    redeemed_at: UtcDatetime
    """When the counter accepted it (its trusted time), RFC 3339."""
    user_id: Identifier | None = None
    expires_at: UtcDatetime | None = None


class SyncRequest(BaseModel):
    """What a counter sends: its redemptions not yet confirmed (at most 500) and its watermark."""

    model_config = STRICT_REQUEST

    redemptions: list[RedemptionUpload] = Field(default_factory=list, max_length=MAX_REDEMPTIONS_PER_SYNC)
    revocations_after: str | None = Field(default=None, max_length=40)
    """The ``revocations.watermark`` of the previous answer; ``null`` on the first sync."""
    nonce: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{16,64}$")
    """Fresh for each request; the signed answer echoes it, so an old answer replayed is refused."""

    @field_validator("redemptions")
    @classmethod
    def _one_per_voucher(cls, redemptions: list[RedemptionUpload]) -> list[RedemptionUpload]:
        seen: set[str] = set()
        for redemption in redemptions:
            if redemption.voucher_id in seen:
                raise ValueError(f"voucher {redemption.voucher_id} appears twice; a counter redeems it once")
            seen.add(redemption.voucher_id)
        return redemptions


class RedemptionResultPublic(BaseModel):
    voucher_id: str
    status: Literal["ok", "conflict", "refused"]
    first_device_id: str | None
    """With ``conflict``: the device whose redemption of the voucher the backend recorded first."""
    first_redeemed_at: Instant | None
    """With ``conflict``: when that device redeemed it."""
    reason: str | None = Field(default=None, exclude_if=lambda reason: reason is None)
    """Only with ``refused``: why the redemption was not stored (its ``redeemed_at`` is implausible)."""


class KeySetDown(BaseModel):
    keys: list[dict[str, object]]
    """The voucher verification keys (RFC 7517): every key that may still have live vouchers."""
    issued_at: Instant
    valid_until: Instant
    """After this, the counter should count its key set as stale until it syncs again."""


class RevocationsDown(BaseModel):
    vouchers: list[str]
    deals: list[str]
    watermark: str | None
    """Send it back as ``revocations_after`` at the next sync."""
    more: bool
    """More revocations wait than one answer carries: sync again at once."""


class Peer(BaseModel):
    device_id: str
    public_key: dict[str, str]


class SyncResponse(BaseModel):
    results: list[RedemptionResultPublic]
    keys: KeySetDown
    revocations: RevocationsDown
    peers: list[Peer]
    """The merchant's other active counters, with the keys their LAN messages are signed with."""
    server_time: Instant
    signed: str = ""
    """All of the above with ``nonce`` and ``device_id``, as a compact JWS of the backend's trust
    key: what a counter believes (the plain fields are for reading)."""
    trust_chain: list[str] = Field(default_factory=list)
    """The links from the first trust key to the one that signed: each announces the next."""


class ConflictingRedemption(BaseModel):
    device_id: str
    redeemed_at: Instant
    received_at: Instant


class Conflict(BaseModel):
    voucher_id: str
    deal_id: str
    redemptions: list[ConflictingRedemption]
    """Every device's redemption of the voucher, the first the backend recorded first."""


class ConflictList(BaseModel):
    conflicts: list[Conflict]
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next page; ``null`` on the last page."""


class VoucherRevoke(BaseModel):
    """Optional body: the voucher's deal, for a voucher the store does not hold yet."""

    model_config = STRICT_REQUEST

    deal_id: Identifier | None = None


class VoucherRevoked(BaseModel):
    voucher_id: str
    deal_id: str | None
    merchant_id: str
    status: Literal["revoked"] = "revoked"
    revoked_at: Instant


# --- What the merchant reads, API key rotation ---


class CounterPublic(BaseModel):
    """An enrolled counter with what it did."""

    device_id: str
    status: DeviceStatus
    enrolled_at: Instant
    revoked_at: Instant | None
    last_sync_at: Instant | None
    """Its last sync (``null``: never synced)."""
    keys_fresh: bool
    """It synced within the key set's validity (``SHOPCARDD_KEYSET_VALID_SECONDS``)."""
    redemptions: int
    """Redemptions it reported."""
    peers: int
    """Other active counters of the merchant it exchanges redemptions with on the shop's LAN."""

    @classmethod
    def of(cls, counter: Counter) -> CounterPublic:
        device = counter.device
        return cls(
            device_id=device.device_id,
            status=device.status,
            enrolled_at=device.enrolled_at,
            revoked_at=device.revoked_at,
            last_sync_at=counter.last_sync_at,
            keys_fresh=counter.keys_fresh,
            redemptions=counter.redemptions,
            peers=counter.peers,
        )


class CounterList(BaseModel):
    devices: list[CounterPublic]


class VoucherIssued(BaseModel):
    """An issued voucher as the store holds it (the token itself is not kept)."""

    voucher_id: str
    deal_id: str
    user_id: str
    issued_at: Instant
    expires_at: Instant

    @classmethod
    def of(cls, voucher: VoucherRecord) -> VoucherIssued:
        return cls.model_validate(voucher, from_attributes=True)


class VoucherList(BaseModel):
    vouchers: list[VoucherIssued]
    """By voucher id."""
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next page; ``null`` on the last page."""


class VoucherDetail(VoucherIssued):
    merchant_id: str
    redemptions: list[ConflictingRedemption]
    """Where and when it was redeemed, the first the backend recorded first (two or more: a conflict)."""
    revoked_at: Instant | None
    """When it (or its whole deal) was revoked; ``null``: it was not."""

    @classmethod
    def of_story(cls, story: VoucherStory) -> VoucherDetail:
        voucher = story.voucher
        return cls(
            voucher_id=voucher.voucher_id,
            deal_id=voucher.deal_id,
            user_id=voucher.user_id,
            issued_at=voucher.issued_at,
            expires_at=voucher.expires_at,
            merchant_id=voucher.merchant_id,
            redemptions=[
                ConflictingRedemption.model_validate(r, from_attributes=True) for r in story.redemptions
            ],
            revoked_at=story.revoked_at,
        )


class KeyRotate(BaseModel):
    """How long the old API key keeps working, so every client can move to the new one."""

    model_config = STRICT_REQUEST

    grace_seconds: int = Field(default=3600, ge=0, le=MAX_KEY_GRACE_SECONDS)
    """0: the old key stops at once (it leaked). At most 30 days."""


class KeyRotated(BaseModel):
    merchant_id: str
    api_key: str
    """The new key: shown this once (only its hash is stored)."""
    old_key_valid_until: Instant
