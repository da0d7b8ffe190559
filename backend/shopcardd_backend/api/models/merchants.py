"""What a merchant reads of its counters and their conflicts, and its API key rotation."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ...merchants import MAX_KEY_GRACE_SECONDS, Counter
from ...stores.base import DeviceStatus
from .fields import STRICT_REQUEST, Instant
from .vouchers import ConflictingRedemption


class Conflict(BaseModel):
    voucher_id: str
    deal_id: str
    redemptions: list[ConflictingRedemption]
    """Every device's redemption of the voucher, the first the backend recorded first."""


class ConflictList(BaseModel):
    conflicts: list[Conflict]
    next_cursor: str | None
    """Pass as ``?cursor=`` for the next page; ``null`` on the last page."""


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
