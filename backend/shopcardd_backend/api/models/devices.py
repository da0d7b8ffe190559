"""A counter's enrolment and its sync: the redemptions it uploads, and the keys, revocations and peers
it is answered with."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from ...devices import MAX_REDEMPTIONS_PER_SYNC
from ...stores.base import DeviceStatus
from .fields import STRICT_REQUEST, Identifier, Instant, UtcDatetime

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
