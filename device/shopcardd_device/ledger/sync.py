"""Sync state: the upload watermark and what goes up next, each answer applied in one transaction
(``apply_sync``), the last sync's server time, a refusal kept until a sync succeeds, and the
pruning of rows the server's time says are expired.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from shopcardd_voucher import KeySet

from .base import LedgerFile
from .redemptions import _REDEMPTION_COLUMNS, Redemption
from .trust import TrustPin, _jwk_text

REJECTION_RETENTION_SECONDS: Final = 30 * 86_400


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """Syncs the backend keeps refusing: since the first refusal, with the latest reason. Kept in the
    ledger because ``status`` runs in another process than the sync that was refused."""

    since: float
    reason: str


@dataclass(frozen=True, slots=True)
class BackendVerdict:
    """The backend's word on one uploaded redemption (docs/backend-api.md, "One sync")."""

    voucher_id: str
    status: str
    first_device_id: str | None = None
    first_redeemed_at: float | None = None


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """What one sync round trip brought, applied to the ledger at once (``Ledger.apply_sync``)."""

    uploaded_through: int
    """The ``seq`` of the last redemption the answer confirmed: the new upload watermark."""
    verdicts: Sequence[BackendVerdict]
    keys: KeySet
    keys_issued_at: float
    keys_valid_until: float
    revoked_vouchers: Sequence[str]
    revoked_deals: Sequence[str]
    revocations_watermark: str | None
    peers: dict[str, dict[str, Any]]
    """device id -> its public Ed25519 JWK."""
    server_time: float
    trust: TrustPin | None = None
    """Where the pin moves (a new trust key announced by the pinned one), kept with the rest."""


class SyncState(LedgerFile):
    """The sync state of ``Ledger``: watermarks, answers applied, refusals kept."""

    @property
    def last_sync(self) -> float | None:
        """The server's time at the last sync."""
        return self._number("last_sync")

    def note_sync(self, server_time: float) -> None:
        """A sync's server time: the last sync, and the floor, set down as well as up."""
        with self._write() as db:
            self._note_sync(db, server_time)

    def _note_sync(self, db: sqlite3.Connection, server_time: float) -> None:
        """The floor becomes the server's time, but never less than ``pruned_through``: a redemption
        let go was of a voucher expired by then, and must stay refused (as ``expired``)."""
        kept = self._one("SELECT value FROM state WHERE name = 'pruned_through'")
        floor = max(float(server_time), float(kept) if kept is not None else float(server_time))
        self._set(db, "time_floor", repr(floor))
        self._set(db, "last_sync", repr(float(server_time)))

    @property
    def sync_failure(self) -> SyncFailure | None:
        """The refusal the last sync ended with, until a sync succeeds."""
        value = self._state("sync_failure")
        if not value:
            return None
        stored = json.loads(value)
        return SyncFailure(float(stored["since"]), str(stored["reason"]))

    def note_sync_failure(self, reason: str, at: float) -> SyncFailure:
        """A refused sync: ``since`` stays the first refusal's time while refusals go on."""
        with self._write() as db:
            earlier = self.sync_failure
            failure = SyncFailure(earlier.since if earlier else at, reason)
            self._set(db, "sync_failure", json.dumps({"since": failure.since, "reason": failure.reason}))
            return failure

    def clear_sync_failure(self) -> None:
        with self._write() as db:
            db.execute("DELETE FROM state WHERE name = 'sync_failure'")

    @property
    def upload_watermark(self) -> int:
        """The ``seq`` of the last redemption the backend confirmed; later ones wait for upload."""
        return int(self._state("uploaded_through") or 0)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last redemption recorded."""
        return int(self._state("redemption_seq") or 0)

    def to_upload(self, *, limit: int, through: int | None = None) -> list[Redemption]:
        """The next ``limit`` redemptions after the upload watermark (up to ``through``), in order."""
        rows = self._db.execute(
            f"SELECT {_REDEMPTION_COLUMNS} FROM redemptions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (self.upload_watermark, self.last_seq if through is None else through, limit),
        )
        return [Redemption(*row) for row in rows]

    def apply_sync(self, record: SyncRecord, leeway: float) -> int:
        """Everything one sync brought, in one transaction; return how many rows were let go.

        The backend's verdicts are kept beside the redemptions (the verdict the counter gave is
        never changed); the upload watermark moves on; the key set is replaced whole (a key the
        backend retired leaves); revocations are added; peers replaced; the server's time sets
        the floor and decides which synced rows are no longer needed; the trust pin moves.
        """
        with self._write() as db:
            floor_before = self.time_floor
            db.executemany(
                "UPDATE redemptions SET synced_at = ?, backend_status = ?, first_device_id = ?,"
                " first_redeemed_at = ? WHERE voucher_id = ?",
                [
                    (record.server_time, v.status, v.first_device_id, v.first_redeemed_at, v.voucher_id)
                    for v in record.verdicts
                ],
            )
            if record.uploaded_through > self.upload_watermark:
                self._set(db, "uploaded_through", str(record.uploaded_through))
            self._store_keyset(
                db, record.keys, record.server_time, record.keys_issued_at, record.keys_valid_until
            )
            self._revoke(db, record.revoked_vouchers, record.revoked_deals, record.server_time)
            self._set(db, "revocations_watermark", record.revocations_watermark or "")
            db.execute("DELETE FROM peers")
            db.executemany(
                "INSERT INTO peers (device_id, public_key) VALUES (?, ?)",
                [(device, json.dumps(jwk, sort_keys=True)) for device, jwk in record.peers.items()],
            )
            if record.trust is not None:
                self._set(db, "trust_origin", _jwk_text(record.trust.origin))
                self._set(db, "trust_key", _jwk_text(record.trust.key))
            self._note_sync(db, record.server_time)
            if floor_before is None:
                return 0  # no time was trusted before this answer: it alone lets nothing go
            return self._prune(db, min(record.server_time, floor_before), record.server_time, leeway)

    def _prune(self, db: sqlite3.Connection, trusted: float, server_time: float, leeway: float) -> int:
        """Let go of synced redemptions whose voucher expired by ``trusted`` (they can only be
        ``expired`` now), remembering the latest such expiry in ``pruned_through`` so that no later
        sync sets the floor below it; and of rejections older than 30 days by the server's time.

        ``trusted`` is the server's time, but no later than the floor before this answer: a sync
        that moved the floor far forward lets go of nothing the old floor did not already refuse
        as expired, so if the backend's clock was wrong, its next (corrected) answer sets the
        floor back and every redemption is still there to say ``already_redeemed``."""
        horizon = db.execute(
            "SELECT max(expires_at) + ? FROM redemptions WHERE synced_at IS NOT NULL AND expires_at < ?",
            (leeway, trusted - leeway),
        ).fetchone()[0]
        self._set(db, "prune_time", repr(float(trusted)))
        gone = 0
        if horizon is not None:
            kept = self._one("SELECT value FROM state WHERE name = 'pruned_through'")
            self._set(db, "pruned_through", repr(max(float(horizon), float(kept or 0))))
            gone = db.execute(
                "DELETE FROM redemptions WHERE synced_at IS NOT NULL AND expires_at < ?",
                (trusted - leeway,),
            ).rowcount
        gone += db.execute(
            "DELETE FROM rejections WHERE coalesce(scanned_at, clock_at) < ?",
            (server_time - REJECTION_RETENTION_SECONDS,),
        ).rowcount
        return gone
