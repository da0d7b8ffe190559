"""A deal's figures as ``GET /v1/deals/{deal_id}/stats`` answers them: claims per minute, notices."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from ...stats import DealStats


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
