"""What a merchant reads of its own sales and counters, and the replacement of its API key.

The use cases behind ``GET /v1/devices``, ``GET /v1/deals/{deal_id}/vouchers``,
``GET /v1/vouchers/{voucher_id}``, ``POST /v1/merchants/{merchant_id}/keys`` and the console's
pages: the routes and the console are thin adapters over ``MerchantService``. Everything here
reads the document store (records and aggregates), never the claim gate's hot counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from .deals import DealNotFound, NotYourDeal
from .devices import NotYourVoucher, VoucherNotFound
from .identity import hash_api_key, new_api_key
from .stores.base import (
    DealRecord,
    DeviceRecord,
    DeviceStatus,
    DocumentStore,
    RedemptionRecord,
    RevocationKind,
    VoucherCounts,
    VoucherRecord,
)

log = logging.getLogger("shopcardd_backend.merchants")
MAX_KEY_GRACE_SECONDS: Final = 30 * 86_400
"""The longest an old API key may keep working after a rotation: a leaked key must die soon."""


class MerchantNotFound(LookupError):
    """No merchant of that id (its key was checked, so it was removed meanwhile)."""


@dataclass(frozen=True, slots=True)
class Counter:
    """An enrolled counter as its merchant sees it."""

    device: DeviceRecord
    last_sync_at: datetime | None
    redemptions: int
    """Redemptions it reported (one per voucher it accepted)."""
    keys_fresh: bool
    """Its key set is still valid: it synced within the key set's validity."""
    peers: int
    """The merchant's other active counters it exchanges redemptions with on the shop's LAN."""


@dataclass(frozen=True, slots=True)
class VoucherStory:
    """One voucher from issue to redemption: where and when it was redeemed, and whether it (or
    its whole deal) was revoked."""

    voucher: VoucherRecord
    redemptions: list[RedemptionRecord]
    revoked_at: datetime | None


class MerchantService:
    def __init__(
        self,
        store: DocumentStore,
        keyset_valid_seconds: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.keyset_valid = timedelta(seconds=keyset_valid_seconds)
        self.now = now

    def counters(self, merchant_id: str) -> list[Counter]:
        """Every counter the merchant enrolled, revoked ones too, by device id."""
        devices = self.store.devices_of_merchant(merchant_id)
        activity = self.store.device_activity(merchant_id)
        active = sum(device.status is DeviceStatus.ACTIVE for device in devices)
        now = self.now()
        counters = []
        for device in devices:
            done = activity.get(device.device_id)
            synced = done.last_sync_at if done else None
            counters.append(
                Counter(
                    device=device,
                    last_sync_at=synced,
                    redemptions=done.redemptions if done else 0,
                    keys_fresh=synced is not None and now - synced < self.keyset_valid,
                    peers=max(active - 1, 0) if device.status is DeviceStatus.ACTIVE else 0,
                )
            )
        return counters

    def own_deal(self, merchant_id: str, deal_id: str) -> DealRecord:
        """The merchant's deal; ``DealNotFound`` or ``NotYourDeal``."""
        deal = self.store.get_deal(deal_id)
        if deal is None:
            raise DealNotFound(f"no deal {deal_id[:100]!r}")
        if deal.merchant_id != merchant_id:
            raise NotYourDeal(f"deal {deal_id!r} belongs to another merchant")
        return deal

    def voucher_counts(self, merchant_id: str, deal_id: str) -> VoucherCounts:
        self.own_deal(merchant_id, deal_id)
        return self.store.voucher_counts(deal_id)

    def vouchers_of_deal(
        self, merchant_id: str, deal_id: str, limit: int, after: str | None = None
    ) -> tuple[list[VoucherRecord], str | None]:
        """A page of the deal's vouchers (as the persist worker stored them) and the next cursor."""
        self.own_deal(merchant_id, deal_id)
        page = self.store.vouchers_page(deal_id, limit + 1, after)
        shown = page[:limit]
        return shown, shown[-1].voucher_id if len(page) > limit else None

    def voucher(self, merchant_id: str, voucher_id: str) -> VoucherStory:
        """The merchant's voucher with its redemptions and revocation; ``VoucherNotFound`` (also
        for one issued a moment ago that the store does not hold yet) or ``NotYourVoucher``."""
        voucher = self.store.get_voucher(voucher_id)
        if voucher is None:
            raise VoucherNotFound(f"no voucher {voucher_id[:64]!r} is stored (yet)")
        if voucher.merchant_id != merchant_id:
            raise NotYourVoucher(f"voucher {voucher_id!r} belongs to another merchant")
        revoked = [
            self.store.revocation_of(merchant_id, RevocationKind.VOUCHER, voucher_id),
            self.store.revocation_of(merchant_id, RevocationKind.DEAL, voucher.deal_id),
        ]
        times = [r.revoked_at for r in revoked if r is not None]
        return VoucherStory(voucher, self.store.redemptions_of_voucher(voucher_id), min(times, default=None))

    def rotate_key(self, merchant_id: str, grace_seconds: int) -> tuple[str, datetime]:
        """A new API key for the merchant (shown once; its hash alone is stored), and until when
        the old one keeps working (``grace_seconds`` from now, 0: it stops at once)."""
        if not 0 <= grace_seconds <= MAX_KEY_GRACE_SECONDS:
            raise ValueError(f"the grace period must be 0 to {MAX_KEY_GRACE_SECONDS} seconds (30 days)")
        api_key, until = new_api_key(), self.now() + timedelta(seconds=grace_seconds)
        if not self.store.rotate_api_key(merchant_id, hash_api_key(api_key), until):
            raise MerchantNotFound(f"no merchant {merchant_id!r}")
        log.info("merchant API key rotated", extra={"merchant_id": merchant_id, "grace": grace_seconds})
        return api_key, until
