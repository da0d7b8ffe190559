"""Claim tallies and notices in SQLite: what the analytics and notify workers keep of a deal,
and a deal's figures counted from them (and its claims issued from its vouchers) by queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..base import (
    REFUSAL_COUNTS,
    ClaimTally,
    MinuteCounts,
    NoticeCounts,
    NoticeOutcome,
    minute_counts,
    notice_counts,
)
from .connection import SqliteConnection, as_stamp


class StatsTables(SqliteConnection):
    """The ``claim_tallies`` and ``notices`` tables."""

    def add_claim_tallies(self, tallies: Sequence[ClaimTally]) -> None:
        self._add_new("claim_tallies", tallies)

    def claims_by_minute(self, deal_id: str) -> list[MinuteCounts]:
        sums = ", ".join(f"SUM({name})" for name in REFUSAL_COUNTS)
        with self._db.reading() as conn:  # issued_at is ISO text: its first 16 characters, the minute
            issued_rows = conn.execute(
                "SELECT substr(issued_at, 1, 16), COUNT(*) FROM vouchers WHERE deal_id = ? GROUP BY 1",
                (deal_id,),
            ).fetchall()
            refused_rows = conn.execute(
                f"SELECT minute, {sums} FROM claim_tallies WHERE deal_id = ? GROUP BY minute", (deal_id,)
            ).fetchall()
        issued = {datetime.fromisoformat(f"{minute}:00+00:00"): n for minute, n in issued_rows}
        refused = {datetime.fromisoformat(minute): counts for minute, *counts in refused_rows}
        return minute_counts(issued, refused)

    def claim_notice(self, voucher_id: str, channel: str, deal_id: str) -> bool:
        with self._db.transaction() as tx:
            taken = tx.execute(
                "INSERT OR IGNORE INTO notices (voucher_id, channel, taken_at, deal_id) VALUES (?, ?, ?, ?)",
                (voucher_id, channel, as_stamp(datetime.now(UTC)), deal_id),
            )
        return taken.rowcount == 1

    def release_notice(self, voucher_id: str, channel: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM notices WHERE voucher_id = ? AND channel = ?", (voucher_id, channel))

    def record_notice(self, voucher_id: str, channel: str, outcome: NoticeOutcome) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE notices SET outcome = ? WHERE voucher_id = ? AND channel = ?",
                (str(outcome), voucher_id, channel),
            )

    def notices_of(self, deal_id: str) -> dict[str, NoticeCounts]:
        with self._db.reading() as conn:  # the index by (deal_id, channel, outcome) covers it
            rows = conn.execute(
                "SELECT channel, outcome, COUNT(*) FROM notices "
                "WHERE deal_id = ? AND outcome IS NOT NULL GROUP BY channel, outcome",
                (deal_id,),
            ).fetchall()
        return notice_counts(rows)
