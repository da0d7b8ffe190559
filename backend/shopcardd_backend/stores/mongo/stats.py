"""Claim tallies and notices in MongoDB: what the analytics and notify workers keep of a deal,
and a deal's figures counted from them (and its claims issued from its vouchers) by aggregations."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from ..base import (
    REFUSAL_COUNTS,
    ClaimTally,
    MinuteCounts,
    NoticeCounts,
    NoticeOutcome,
    minute_counts,
    notice_counts,
    utc_ms,
)
from .connection import MongoConnection, as_document


class StatsCollections(MongoConnection):
    """The ``claim_tallies`` and ``notices`` collections."""

    def add_claim_tallies(self, tallies: Sequence[ClaimTally]) -> None:
        if tallies:
            with self._mapped_errors():
                self._insert_new(self._tallies, [as_document("event_id", tally) for tally in tallies])

    def claims_by_minute(self, deal_id: str) -> list[MinuteCounts]:
        by_minute = {"$dateTrunc": {"date": "$issued_at", "unit": "minute"}}
        issued_pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id}},  # the index by (deal_id, issued_at)
            {"$group": {"_id": by_minute, "issued": {"$sum": 1}}},
        ]
        refused_pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id}},
            {"$group": {"_id": "$minute", **{name: {"$sum": f"${name}"} for name in REFUSAL_COUNTS}}},
        ]
        with self._mapped_errors():
            issued = {
                utc_ms(g["_id"]): int(g["issued"]) for g in self._stale_vouchers.aggregate(issued_pipeline)
            }
            refused = {
                utc_ms(g["_id"]): [int(g[name]) for name in REFUSAL_COUNTS]
                for g in self._stale_tallies.aggregate(refused_pipeline)
            }
        return minute_counts(issued, refused)

    def claim_notice(self, voucher_id: str, channel: str, deal_id: str) -> bool:
        """Taken by this call, or not. The insert carries a token of this call: when the driver
        sends it again (a retryable write whose answer was lost, to a server that does not
        recognise the retry) and gets a duplicate key, the notice found is ours if it holds our
        token, and is sent; else it was taken before, and no customer is told twice."""
        notice_id, taker = f"{voucher_id}/{channel}", secrets.token_hex(8)
        notice = {
            "_id": notice_id,
            "taken_at": datetime.now(UTC),
            "taker": taker,
            "deal_id": deal_id,
            "channel": channel,
            "outcome": None,
        }
        with self._mapped_errors():
            try:
                self._notices.insert_one(notice)
            except DuplicateKeyError:
                found = self._notices.find_one({"_id": notice_id}, {"taker": 1})
                return found is not None and found.get("taker") == taker
        return True

    def release_notice(self, voucher_id: str, channel: str) -> None:
        with self._mapped_errors():
            self._notices.delete_one({"_id": f"{voucher_id}/{channel}"})

    def record_notice(self, voucher_id: str, channel: str, outcome: NoticeOutcome) -> None:
        with self._mapped_errors():
            self._notices.update_one({"_id": f"{voucher_id}/{channel}"}, {"$set": {"outcome": str(outcome)}})

    def notices_of(self, deal_id: str) -> dict[str, NoticeCounts]:
        outcomes = [str(outcome) for outcome in NoticeOutcome]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"deal_id": deal_id, "outcome": {"$in": outcomes}}},
            {"$group": {"_id": {"channel": "$channel", "outcome": "$outcome"}, "count": {"$sum": 1}}},
        ]
        with self._mapped_errors():
            found = list(self._notices.aggregate(pipeline))
        return notice_counts((g["_id"]["channel"], g["_id"]["outcome"], g["count"]) for g in found)
