"""What the counter trusts: the key set in force (seeded from the ``keyset`` file, replaced by each
sync), revocations, the merchant's other counters, the backend's trust key, and the time floor:
the latest time proven, which the clock is never believed behind.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shopcardd_voucher import KeySet, VerificationKey

from .base import LedgerFile


@dataclass(frozen=True, slots=True)
class StoredKeys:
    """The key set in force and what is known of its freshness."""

    keys: KeySet
    version: int
    """Changes whenever the stored key set or its window does: a running counter reloads then."""
    issued_at: float | None
    valid_until: float | None
    """Past it the key set is stale (the device should have synced); ``None``: seeded from the
    ``keyset`` file, which says nothing of freshness."""


@dataclass(frozen=True, slots=True)
class TrustPin:
    """The trust key that signed a sync answer, and the bundle's pin whose chain led to it."""

    origin: VerificationKey
    key: VerificationKey


def _jwk_text(key: VerificationKey) -> str:
    return json.dumps(key.to_jwk(), sort_keys=True)


class TrustTables(LedgerFile):
    """The key set, revocations, peers, trust key and time floor of ``Ledger``."""

    def is_revoked(self, voucher_id: str, deal: str) -> bool:
        return bool(
            self._one(
                "SELECT 1 FROM revocations"
                " WHERE (kind = 'voucher' AND value = ?) OR (kind = 'deal' AND value = ?)",
                voucher_id,
                deal,
            )
        )

    @property
    def time_floor(self) -> float | None:
        return self._number("time_floor")

    def _raise_floor(self, db: sqlite3.Connection, moment: float) -> None:
        db.execute(
            "INSERT INTO state (name, value) VALUES ('time_floor', ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(state.value AS REAL)",
            (repr(float(moment)),),
        )

    def raise_floor(self, moment: float) -> None:
        """Note that ``moment`` has passed (only a sync sets the floor down)."""
        with self._write() as db:
            self._raise_floor(db, moment)

    def _store_keyset(
        self,
        db: sqlite3.Connection,
        keys: KeySet,
        loaded_at: float,
        issued_at: float | None = None,
        valid_until: float | None = None,
    ) -> bool:
        """Replace the key set (and its window) when it differs; return whether it did."""
        wanted = {
            "keyset": keys.to_json(),
            "keyset_issued_at": "" if issued_at is None else repr(float(issued_at)),
            "keyset_valid_until": "" if valid_until is None else repr(float(valid_until)),
        }
        stored = dict(db.execute("SELECT name, value FROM state WHERE name IN (?, ?, ?)", tuple(wanted)))
        if stored == wanted:
            return False
        for name, value in wanted.items():
            self._set(db, name, value)
        self._set(db, "keyset_loaded_at", repr(float(loaded_at)))
        self._set(db, "keyset_version", str(self.keyset_version() + 1))
        return True

    def store_keyset(
        self, keys: KeySet, loaded_at: float, issued_at: float | None = None, valid_until: float | None = None
    ) -> bool:
        """Replace the key set in force, at once for every reader; return whether it changed."""
        with self._write() as db:
            return self._store_keyset(db, keys, loaded_at, issued_at, valid_until)

    def seed_keyset(self, keys: KeySet, loaded_at: float) -> bool:
        """Store ``keys`` (the ``keyset`` file) only if the ledger holds no key set yet: after
        that the ledger is the one source, and only a sync replaces it."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM state WHERE name = 'keyset'").fetchone():
                return False
            return self._store_keyset(db, keys, loaded_at)

    def keyset_version(self) -> int:
        """Cheap to ask before every scan: a new number means a new key set to load."""
        return int(self._state("keyset_version") or 0)

    def keyset(self) -> KeySet | None:
        text = self._state("keyset")
        return None if text is None else KeySet.from_jwks(text)

    def stored_keys(self) -> StoredKeys | None:
        """The key set in force with its version and window, read in one statement (consistent)."""
        names = ("keyset", "keyset_version", "keyset_issued_at", "keyset_valid_until")
        rows = dict(self._db.execute("SELECT name, value FROM state WHERE name IN (?, ?, ?, ?)", names))
        if "keyset" not in rows:
            return None

        def moment(name: str) -> float | None:
            return float(rows[name]) if rows.get(name) else None

        return StoredKeys(
            KeySet.from_jwks(rows["keyset"]),
            int(rows.get("keyset_version") or 0),
            moment("keyset_issued_at"),
            moment("keyset_valid_until"),
        )

    def _revoke(
        self, db: sqlite3.Connection, vouchers: Iterable[str], deals: Iterable[str], at: float | None
    ) -> None:
        rows = [("voucher", v, at) for v in vouchers] + [("deal", d, at) for d in deals]
        db.executemany("INSERT OR IGNORE INTO revocations (kind, value, revoked_at) VALUES (?, ?, ?)", rows)

    def revoke(
        self, *, vouchers: Iterable[str] = (), deals: Iterable[str] = (), at: float | None = None
    ) -> None:
        with self._write() as db:
            self._revoke(db, vouchers, deals, at)

    def revocation_count(self) -> int:
        return int(self._one("SELECT count(*) FROM revocations"))

    @property
    def revocations_watermark(self) -> str | None:
        """The backend's watermark of the revocations this ledger holds (``revocations_after``)."""
        return self._state("revocations_watermark") or None

    def peers(self) -> dict[str, dict[str, Any]]:
        """The merchant's other counters, by device id, with their public keys (from the last sync)."""
        rows = self._db.execute("SELECT device_id, public_key FROM peers ORDER BY device_id")
        return {device_id: json.loads(jwk) for device_id, jwk in rows}

    def trust_key(self, pinned: VerificationKey) -> VerificationKey:
        """The trust key in force: where syncs moved the pin from ``pinned`` (the bundle's), or
        ``pinned`` itself (also when the bundle pins another key than the one they started from:
        a device enrolled again starts again from its new bundle)."""
        rows = dict(
            self._db.execute("SELECT name, value FROM state WHERE name IN ('trust_origin', 'trust_key')")
        )
        if rows.get("trust_origin") != _jwk_text(pinned) or "trust_key" not in rows:
            return pinned
        return VerificationKey.from_jwk(json.loads(rows["trust_key"]))
