"""The shop LAN's tables (``shopcardd_device.lan``): this ledger's epoch and start numbers, what
each peer last said and was sent, and the redemptions peers told of, pruned by a sync's time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .base import LedgerFile


@dataclass(frozen=True, slots=True)
class LanRecord:
    """One redemption as the LAN gossip carries it (``shopcardd_device.gossip``): no user id."""

    voucher_id: str
    deal: str
    redeemed_at: float
    expires_at: int
    seq: int


@dataclass(frozen=True, slots=True)
class LanPeer:
    """What ``status`` shows of one peer on the LAN."""

    device_id: str
    address: str | None
    last_heard: float | None
    received: int
    sent: int
    watermark: int


class LanTables(LedgerFile):
    """The shop LAN's tables of ``Ledger``."""

    def lan_connection(self) -> None:
        """Make this connection's commits cheap (``synchronous = NORMAL``): the LAN thread's writes
        (records of peers, when they were heard) may be lost in a power cut, and the catch-up
        fetches them again; the scan's own commits, on their own connection, stay FULL."""
        self._db.execute("PRAGMA synchronous = NORMAL")

    def lan_epoch(self) -> str:
        """This ledger's identity on the LAN, made once: a peer that sees it change (a new ledger
        under the same device id, whose numbers start again at 1) starts its watermark over."""
        with self._write() as db:
            db.execute(
                "INSERT INTO state (name, value) VALUES ('lan_epoch', ?) ON CONFLICT (name) DO NOTHING",
                (uuid.uuid4().hex[:16],),
            )
        return str(self._state("lan_epoch"))

    def lan_start(self, now: float) -> int:
        """This start's number on the LAN, above every earlier one of this ledger (so above what a
        recorded message of an earlier process carries) and not below ``now``, the seconds of the
        trusted time: a ledger made anew under the same device id starts above the old one's
        numbers, which its peers still hold. Committed (fsynced) before the first message is sent."""
        with self._write() as db:
            row = db.execute("SELECT value FROM state WHERE name = 'lan_start'").fetchone()
            start = max(0 if row is None else int(row[0]), int(now) - 1) + 1
            self._set(db, "lan_start", str(start))
        return start

    def lan_heard(self) -> dict[str, tuple[int, int]]:
        """Each peer's last message heard: (its start number, its count in that start)."""
        rows = self._db.execute("SELECT device_id, heard_start, heard_count FROM lan_peers")
        return {str(device): (int(start), int(count)) for device, start, count in rows}

    def own_records(self, after: int, *, max_rows: int) -> tuple[list[LanRecord], int]:
        """This device's redemptions numbered after ``after`` (at most ``max_rows``, in order) and the
        number they run through: the last row's when cut short, else the last number given, so a
        peer's watermark passes the gaps (a lost race, a row let go) too. One read transaction."""
        self._db.execute("BEGIN")
        try:
            rows = self._db.execute(
                "SELECT voucher_id, deal, redeemed_at, expires_at, seq FROM redemptions"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, max_rows),
            ).fetchall()
            last = self.last_seq
        finally:
            self._db.execute("COMMIT")
        through = rows[-1][4] if len(rows) == max_rows else max(last, after)
        return [LanRecord(*row) for row in rows], through

    def note_peer(
        self,
        device_id: str,
        *,
        epoch: str,
        address: str,
        heard_at: float,
        counter: tuple[int, int],
        records: Sequence[LanRecord] = (),
        span: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """A verified message of peer ``device_id``: when and where it was heard, its ``counter``
        (start number, count: the last heard, kept across restarts of either counter), and its
        ``records`` (kept once: a replay changes nothing). ``span`` (after, through) says the records
        are all the peer has numbered in that range: when this ledger already holds the peer's records
        up to ``after``, its watermark moves on to ``through``. Returns (records new here, watermark)."""
        with self._write() as db:
            row = db.execute(
                "SELECT epoch, watermark FROM lan_peers WHERE device_id = ?", (device_id,)
            ).fetchone()
            watermark = 0 if row is None or row[0] != epoch else int(row[1])
            inserted = 0
            for record in records:
                inserted += db.execute(
                    "INSERT INTO lan_redemptions (voucher_id, device_id, redeemed_at, deal, expires_at, seq,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        record.voucher_id,
                        device_id,
                        record.redeemed_at,
                        record.deal,
                        record.expires_at,
                        record.seq,
                        heard_at,
                    ),
                ).rowcount
            if span is not None and span[0] <= watermark:
                watermark = max(watermark, span[1])
            db.execute(
                "INSERT INTO lan_peers (device_id, epoch, watermark, address, last_heard, received,"
                " heard_start, heard_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id)"
                " DO UPDATE SET epoch = excluded.epoch, watermark = excluded.watermark,"
                " address = excluded.address, last_heard = excluded.last_heard,"
                " received = received + excluded.received, heard_start = excluded.heard_start,"
                " heard_count = excluded.heard_count",
                (device_id, epoch, watermark, address, heard_at, inserted, *counter),
            )
        return inserted, watermark

    def note_sent(self, counts: dict[str, int]) -> None:
        """Add to the records sent to each peer (for ``status``)."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO lan_peers (device_id, sent) VALUES (?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET sent = sent + excluded.sent",
                list(counts.items()),
            )

    def redeemed_by_peer(self, voucher_id: str) -> tuple[str, float] | None:
        """The peer that redeemed the voucher first, by its record, and when; only records of the
        merchant's current counters count (a device revoked since is no longer believed)."""
        row = self._db.execute(
            "SELECT r.device_id, r.redeemed_at FROM lan_redemptions AS r JOIN peers AS p USING (device_id)"
            " WHERE r.voucher_id = ? ORDER BY r.redeemed_at LIMIT 1",
            (voucher_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def lan_peers(self) -> list[LanPeer]:
        """Every peer heard from or sent to on the LAN, by device id."""
        rows = self._db.execute(
            "SELECT device_id, address, last_heard, received, sent, watermark FROM lan_peers"
            " ORDER BY device_id"
        )
        return [LanPeer(*row) for row in rows]

    @property
    def prune_time(self) -> float | None:
        """The time by which the last sync let expired redemptions go (``_prune``): the server's,
        never past the floor that stood before that answer."""
        return self._number("prune_time")

    def prune_lan(self, server_time: float, leeway: float) -> int:
        """Let go of peers' records of vouchers expired by a sync's time (``prune_time``; never by
        the clock's word, as for the ledger's own redemptions): such a voucher can only be
        ``expired`` now."""
        with self._write() as db:
            return int(
                db.execute(
                    "DELETE FROM lan_redemptions WHERE expires_at < ?", (server_time - leeway,)
                ).rowcount
            )
