"""Redemptions and rejections: recording each scan's verdict (a redemption keyed by its voucher
id, so two racing scans cannot both insert; a rejection with its reason, capped, its count kept
apart), and reading them back for ``status`` and sync.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from typing import Final

from shopcardd_voucher import Reason, Verdict

from ..inputs import fingerprint, safe_code
from .base import LedgerFile

MAX_DETAIL_LENGTH: Final = 200
"""A verdict's detail may quote the token (a kid): stored cut to this."""


_NEXT_SEQ: Final = """
INSERT INTO state (name, value) VALUES ('redemption_seq', '1') ON CONFLICT (name)
DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) RETURNING CAST(value AS INTEGER)
"""


_INSERT_REDEMPTION: Final = """
INSERT INTO redemptions
    (voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user, merchant, expires_at, seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (voucher_id) DO NOTHING
"""


_REDEMPTION_COLUMNS: Final = (
    "voucher_id, nonce, device_id, redeemed_at, clock_at, deal, user, merchant, expires_at, result,"
    " synced_at, seq, backend_status, first_device_id, first_redeemed_at"
)


_INSERT_REJECTION: Final = """
INSERT INTO rejections (nonce, device_id, scanned_at, clock_at, result, voucher_id, deal, raw, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


_COUNT_REJECTION: Final = """
INSERT INTO rejection_counts (result, count) VALUES (?, 1)
ON CONFLICT (result) DO UPDATE SET count = count + 1
"""


@dataclass(frozen=True, slots=True)
class Redemption:
    voucher_id: str
    nonce: str
    device_id: str
    redeemed_at: float
    clock_at: float
    deal: str
    user: str
    merchant: str
    expires_at: int
    result: str
    synced_at: float | None
    seq: int
    backend_status: str | None = None
    """The backend's verdict once synced: ``ok``, or ``conflict`` (another device redeemed it first)."""
    first_device_id: str | None = None
    first_redeemed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    id: int
    nonce: str
    device_id: str
    scanned_at: float | None
    clock_at: float
    result: str
    voucher_id: str | None
    deal: str | None
    raw: str
    detail: str
    synced_at: float | None


class RedemptionTables(LedgerFile):
    """The redemptions and rejections tables of ``Ledger``."""

    def redeemed_at(self, voucher_id: str) -> float | None:
        value = self._one("SELECT redeemed_at FROM redemptions WHERE voucher_id = ?", voucher_id)
        return None if value is None else float(value)

    def record(
        self,
        verdict: Verdict,
        *,
        raw: str,
        device_id: str,
        scanned_at: float | None,
        clock_at: float,
        time_floor: float | None,
    ) -> Verdict:
        """Commit one scan (and the raised time floor) durably; return the final verdict.

        An accepted verdict becomes ``already_redeemed`` when the voucher's row already
        exists: the primary key, not an earlier read, is what makes redemption once-only.
        """
        with self._write() as db:
            if time_floor is not None:
                self._raise_floor(db, time_floor)
            voucher = verdict.voucher
            if verdict.is_accepted and voucher is not None and scanned_at is not None:
                seq = db.execute(_NEXT_SEQ).fetchone()[0]
                inserted = db.execute(
                    _INSERT_REDEMPTION,
                    (
                        voucher.voucher_id,
                        uuid.uuid4().hex,
                        device_id,
                        scanned_at,
                        clock_at,
                        voucher.deal,
                        voucher.user,
                        voucher.merchant,
                        voucher.expires_at,
                        seq,
                    ),
                ).rowcount
                if inserted:
                    return verdict
                verdict = Verdict(Reason.ALREADY_REDEEMED, voucher, "redeemed a moment ago (race)")
            self._add_rejection(db, verdict, raw, device_id, scanned_at, clock_at)
        return verdict

    def _add_rejection(
        self,
        db: sqlite3.Connection,
        verdict: Verdict,
        raw: str,
        device_id: str,
        scanned_at: float | None,
        clock_at: float,
    ) -> None:
        """One rejection row (the code's fingerprint; a genuine voucher's id and deal), its count,
        and the oldest rows past ``max_rejections`` let go, all in the scan's transaction."""
        voucher = verdict.voucher
        detail = safe_code(verdict.detail)
        row = (
            uuid.uuid4().hex,
            device_id,
            scanned_at,
            clock_at,
            str(verdict.reason),
            voucher.voucher_id if voucher else None,
            voucher.deal if voucher else None,
            fingerprint(raw),
            detail if len(detail) <= MAX_DETAIL_LENGTH else detail[: MAX_DETAIL_LENGTH - 3] + "...",
        )
        added = db.execute(_INSERT_REJECTION, row).lastrowid
        db.execute(_COUNT_REJECTION, (str(verdict.reason),))
        if added is not None:  # ids only grow while the newest row stays: the oldest have the lowest
            db.execute("DELETE FROM rejections WHERE id <= ?", (added - self.max_rejections,))

    def accepted_count(self) -> int:
        return int(self._one("SELECT count(*) FROM redemptions"))

    def rejected_counts(self) -> dict[str, int]:
        """Every rejection ever recorded here, by reason: exact, whatever rows the cap let go."""
        rows = self._db.execute("SELECT result, count FROM rejection_counts ORDER BY result")
        return {result: count for result, count in rows}

    def unsynced_count(self) -> int:
        """Redemptions the backend has not confirmed yet (rejections stay on the device)."""
        return int(self._one("SELECT count(*) FROM redemptions WHERE seq > ?", self.upload_watermark))

    def redemptions(self, *, unsynced_only: bool = False, limit: int = -1) -> list[Redemption]:
        where = "WHERE synced_at IS NULL" if unsynced_only else ""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions {where} ORDER BY seq LIMIT ?", (limit,)
        )
        return [Redemption(*row) for row in rows]

    def conflicts(self, limit: int = -1) -> list[Redemption]:
        """Redemptions the backend says another device made first, latest first."""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions WHERE backend_status = 'conflict'"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [Redemption(*row) for row in rows]

    def conflict_count(self) -> int:
        return int(self._one("SELECT count(*) FROM redemptions WHERE backend_status = 'conflict'"))

    def rejections(self, *, limit: int = -1) -> list[Rejection]:
        rows = self._db.execute("SELECT * FROM rejections ORDER BY id LIMIT ?", (limit,))
        return [Rejection(*row) for row in rows]
