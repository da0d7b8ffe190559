"""A deal's statistics for its merchant: claims issued and refused, by minute and in total,
and the notices its customers were sent (and those refused) per channel.

The use case behind ``GET /v1/deals/{deal_id}/stats``, the console's live page and
``shopcardd-backend stats``; the claims issued are the vouchers the persist worker stored,
the refusals the analytics worker's tallies (``workers/analytics.py``), and the notice counts
the notify worker's (``workers/notify.py``), so a claim shows here once its event has been
through the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .deals import DealNotFound, DealService, DealView, NotYourDeal
from .stores.base import (
    CLAIM_COUNTS,
    NOTICE_CHANNELS,
    DocumentStore,
    MinuteCounts,
    NoticeCounts,
    VoucherCounts,
)


@dataclass(frozen=True, slots=True)
class DealStats:
    deal_id: str
    minutes: list[MinuteCounts]
    """Minutes with any claim, oldest first."""
    totals: dict[str, int]
    """The minutes summed, by count (``CLAIM_COUNTS``)."""
    notices: dict[str, NoticeCounts]
    """Notices sent and refused, per channel (every one of ``NOTICE_CHANNELS``, 0 when none)."""


def deal_stats(store: DocumentStore, deal_id: str, merchant_id: str) -> DealStats:
    """The deal's statistics; ``DealNotFound``, or ``NotYourDeal`` for another merchant's deal."""
    deal = store.get_deal(deal_id)
    if deal is None:
        raise DealNotFound(f"no deal {deal_id[:100]!r}")
    if deal.merchant_id != merchant_id:
        raise NotYourDeal(f"deal {deal_id!r} belongs to another merchant")
    minutes = store.claims_by_minute(deal_id)
    totals = {name: sum(getattr(minute, name) for minute in minutes) for name in CLAIM_COUNTS}
    counted = store.notices_of(deal_id)
    notices = {channel: counted.get(channel, NoticeCounts()) for channel in (*NOTICE_CHANNELS, *counted)}
    return DealStats(deal_id, minutes, totals, notices)


@dataclass(frozen=True, slots=True)
class DealFigures:
    """A deal at a glance, for the console's live page and ``shopcardd-backend stats``: read
    from aggregates (the gate's stock, the tallies, counts), never claim by claim."""

    view: DealView
    stats: DealStats
    vouchers: VoucherCounts
    stock_curve: list[tuple[datetime, int]]
    """Stock left at the end of each minute with claims, from the issued counts."""


def deal_figures(deals: DealService, deal_id: str, merchant_id: str) -> DealFigures:
    """The figures of the merchant's deal; ``DealNotFound``, ``NotYourDeal``, 503 for a lost deal."""
    stats = deal_stats(deals.store, deal_id, merchant_id)
    view = deals.get(deal_id)
    left, curve = view.deal.stock, []
    for minute in stats.minutes:
        left -= minute.issued
        curve.append((minute.minute, max(left, 0)))
    return DealFigures(view, stats, deals.store.voucher_counts(deal_id), curve)
