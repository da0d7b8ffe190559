"""The embedded claim gate: one SQLite transaction decides a claim and writes its event.

Each claim is one ``BEGIN IMMEDIATE`` transaction (see ``storage.py``): the write lock is
held from the first read to the commit, so the checks and the updates cannot interleave with
another thread's or another process's claim. ``stock_left`` has a ``CHECK (>= 0)``
constraint as a last line of defence. Schema:

- ``deals``: the terms, ``stock_left`` and ``cancelled``;
- ``user_claims``: vouchers per (deal, user), for the per-user limit;
- ``claims``: the voucher of each (deal, user, idempotency key), replayed on retries;
- ``outbox``: events (JSON payload), ``event_id`` an increasing integer; ``deal_id`` to find
  one deal's; ``leased_by`` and ``lease_until`` (epoch seconds) while a relay holds the event;
  ``added_at`` (epoch seconds) when it was written, for the backlog's age.

The claim rate limits' counters (``count_async``, or a claim's ``rate_count``, counted just before
its transaction) live in a file of their own beside it
(``NAME-rates.sqlite3``), committed without an fsync: counting never waits on the claims'
write lock, and a counter lost in a power cut costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from shopcardd_voucher import Voucher

from ..storage import Closing, SqliteFile, add_missing_columns
from .base import (
    ClaimAttempt,
    ClaimDecision,
    DealTerms,
    GateUnavailable,
    OutboxBacklog,
    OutboxEvent,
    Outcome,
    check_claim_step,
    claim_event_payload,
    count_apart,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deals (
    deal_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    stock INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    voucher_ttl_seconds INTEGER NOT NULL,
    starts_at INTEGER,
    ends_at INTEGER,
    stock_left INTEGER NOT NULL CHECK (stock_left >= 0),
    cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS user_claims (
    deal_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    claimed INTEGER NOT NULL,
    PRIMARY KEY (deal_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    deal_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    voucher_id TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (deal_id, user_id, idempotency_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    deal_id TEXT,
    leased_by TEXT,
    lease_until REAL,
    added_at REAL
);
"""
OUTBOX_COLUMNS_ADDED = {"deal_id": "TEXT", "leased_by": "TEXT", "lease_until": "REAL", "added_at": "REAL"}
"""Columns an outbox made by an older version lacks; added at opening."""
OUTBOX_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_by_deal ON outbox (deal_id, event_id);
CREATE INDEX IF NOT EXISTS outbox_by_lease ON outbox (lease_until, event_id);
"""

COUNT_USER_CLAIM = "INSERT INTO user_claims VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET claimed = claimed + 1"

RATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_counts (
    name TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    hits INTEGER NOT NULL
) WITHOUT ROWID;
"""
COUNT_HIT = (
    "INSERT INTO rate_counts VALUES (?, ?, 1) ON CONFLICT (name) DO UPDATE SET"
    " hits = CASE WHEN window_start >= excluded.window_start THEN hits + 1 ELSE 1 END,"
    " window_start = MAX(window_start, excluded.window_start) RETURNING hits"
)
"""One hit of a counter: a row per name, started again at 1 when a new window begins."""

EVENT_ID_DIGITS = 20
"""Event ids are zero-padded so that they also sort as strings."""


def _record_claim(tx: sqlite3.Connection, deal_id: str, idempotency_key: str, voucher: Voucher) -> None:
    """Count ``voucher`` against its user's limit and keep it for replays: the writes that
    ``claim`` makes for a new voucher and ``load_deal`` for each voucher it rebuilds from."""
    tx.execute(COUNT_USER_CLAIM, (deal_id, voucher.user))
    tx.execute(
        "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
        (deal_id, voucher.user, idempotency_key, voucher.voucher_id, voucher.issued_at, voucher.expires_at),
    )


def _append_event(tx: sqlite3.Connection, deal_id: str, payload: dict[str, Any], now: float) -> None:
    row = (json.dumps(payload), deal_id, now)
    tx.execute("INSERT INTO outbox (payload, deal_id, added_at) VALUES (?, ?, ?)", row)


def _event(event_id: int, payload: str) -> OutboxEvent:
    return OutboxEvent(f"{event_id:0{EVENT_ID_DIGITS}d}", json.loads(payload))


class SqliteClaimGate(Closing):
    """``ClaimGate``, ``Outbox`` and ``RateCounter`` on one SQLite file (the outbox a table written
    in the claim's own transaction); threads and processes may share the file."""

    def __init__(self, path: Path | str, busy_timeout: float = 5.0) -> None:
        self._db = SqliteFile(path, SCHEMA, GateUnavailable, busy_timeout)
        path = Path(path)
        rates = path.with_name(f"{path.stem}-rates{path.suffix}")
        self._rates = SqliteFile(rates, RATES_SCHEMA, GateUnavailable, busy_timeout, durable=False)
        self._swept_before = 0
        self._clock: Callable[[], float] = time.time
        with self._db.transaction() as tx:
            add_missing_columns(tx, "outbox", OUTBOX_COLUMNS_ADDED)
            for statement in OUTBOX_INDEXES.split(";"):
                if statement.strip():
                    tx.execute(statement)

    def load_deal(self, terms: DealTerms, claimed: Iterable[tuple[str, Voucher]] = ()) -> None:
        claimed = list(claimed)
        with self._db.transaction() as tx:
            known = tx.execute("SELECT 1 FROM deals WHERE deal_id = ?", (terms.deal_id,)).fetchone()
            values = (
                terms.merchant_id,
                terms.stock,
                terms.per_user_limit,
                terms.voucher_ttl_seconds,
                terms.starts_at,
                terms.ends_at,
                int(terms.cancelled),
                terms.deal_id,
            )
            if known:  # a cancelled deal stays cancelled: MAX never reopens it
                tx.execute(
                    "UPDATE deals SET merchant_id = ?, stock = ?, per_user_limit = ?,"
                    " voucher_ttl_seconds = ?, starts_at = ?, ends_at = ?, cancelled = MAX(cancelled, ?)"
                    " WHERE deal_id = ?",
                    values,
                )
            else:
                tx.execute(
                    "INSERT INTO deals (merchant_id, stock, per_user_limit, voucher_ttl_seconds,"
                    " starts_at, ends_at, cancelled, deal_id, stock_left) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, terms.stock),
                )
            if known and not claimed:
                return
            tx.execute("DELETE FROM user_claims WHERE deal_id = ?", (terms.deal_id,))
            tx.execute("DELETE FROM claims WHERE deal_id = ?", (terms.deal_id,))
            tx.execute(
                "UPDATE deals SET stock_left = ? WHERE deal_id = ?",
                (max(terms.stock - len(claimed), 0), terms.deal_id),
            )
            for key, voucher in claimed:
                _record_claim(tx, terms.deal_id, key, voucher)

    async def claim_async(self, attempt: ClaimAttempt) -> ClaimDecision:
        """The same transaction in a worker thread: sqlite3 blocks, and the event loop must not."""
        return await asyncio.to_thread(self.claim, attempt)

    async def count_async(self, names: Sequence[str], window_start: int, window_seconds: int) -> list[int]:
        return await asyncio.to_thread(self._count, names, window_start, window_seconds)

    def _count(self, names: Sequence[str], window_start: int, window_seconds: int) -> list[int]:
        with self._rates.transaction() as tx:
            if window_start > self._swept_before:  # once a window: forget the counters of past ones
                tx.execute("DELETE FROM rate_counts WHERE window_start < ?", (window_start - window_seconds,))
                self._swept_before = window_start
            return [tx.execute(COUNT_HIT, (name, window_start)).fetchone()[0] for name in names]

    async def aclose(self) -> None:
        """Nothing of its own to close: ``close()`` closes the connections."""

    def claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        counted = attempt.rate_count
        if counted is None:
            return self._claim(attempt)
        hits = tuple(self._count(counted.names, counted.window_start, counted.window_seconds))
        return replace(self._claim(count_apart(attempt, hits)), hits=hits)

    def _claim(self, attempt: ClaimAttempt) -> ClaimDecision:
        if attempt.replay_only:  # reads only: a flood over its rate limit never takes the write lock
            with self._db.reading() as conn:
                return self._decide(conn, attempt)
        with self._db.transaction() as tx:
            return self._decide(tx, attempt)

    def _decide(self, tx: sqlite3.Connection, attempt: ClaimAttempt) -> ClaimDecision:
        """The rules in the port's order; writes only for an ISSUED claim."""
        deal = tx.execute(
            "SELECT merchant_id, per_user_limit, voucher_ttl_seconds, starts_at, ends_at, stock_left,"
            " cancelled FROM deals WHERE deal_id = ?",
            (attempt.deal_id,),
        ).fetchone()
        if deal is None:
            return ClaimDecision(Outcome.RATE_LIMITED if attempt.replay_only else Outcome.UNKNOWN_DEAL)
        merchant_id, limit, ttl, starts_at, ends_at, stock_left, cancelled = deal

        def voucher(voucher_id: str, issued_at: int, expires_at: int) -> Voucher:
            return Voucher(voucher_id, attempt.deal_id, attempt.user_id, merchant_id, issued_at, expires_at)

        prior = tx.execute(
            "SELECT voucher_id, issued_at, expires_at FROM claims"
            " WHERE deal_id = ? AND user_id = ? AND idempotency_key = ?",
            (attempt.deal_id, attempt.user_id, attempt.idempotency_key),
        ).fetchone()
        if prior is not None:
            return ClaimDecision(Outcome.REPLAYED, voucher(*prior), stock_left)
        if attempt.replay_only:
            return ClaimDecision(Outcome.RATE_LIMITED, stock_left=stock_left)
        now = attempt.now
        if (
            cancelled
            or (starts_at is not None and now < starts_at)
            or (ends_at is not None and now >= ends_at)
        ):
            return ClaimDecision(Outcome.SALE_NOT_OPEN, stock_left=stock_left)
        if stock_left <= 0:
            return ClaimDecision(Outcome.SOLD_OUT, stock_left=0)
        row = tx.execute(
            "SELECT claimed FROM user_claims WHERE deal_id = ? AND user_id = ?",
            (attempt.deal_id, attempt.user_id),
        ).fetchone()
        if row is not None and row[0] >= limit:
            return ClaimDecision(Outcome.LIMIT_REACHED, stock_left=stock_left)
        issued = voucher(attempt.voucher_id, now, now + ttl)
        tx.execute("UPDATE deals SET stock_left = stock_left - 1 WHERE deal_id = ?", (attempt.deal_id,))
        _record_claim(tx, attempt.deal_id, attempt.idempotency_key, issued)
        _append_event(tx, attempt.deal_id, claim_event_payload(issued, attempt), self._clock())
        return ClaimDecision(Outcome.ISSUED, issued, stock_left - 1)

    def stock_left(self, deal_id: str) -> int | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT stock_left FROM deals WHERE deal_id = ?", (deal_id,)).fetchone()
        return None if row is None else row[0]

    def cancel(self, deal_id: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE deals SET cancelled = 1 WHERE deal_id = ?", (deal_id,))

    def read_outbox(
        self, after: str | None = None, limit: int | None = 100, deal_id: str | None = None
    ) -> Sequence[OutboxEvent]:
        where, args = "event_id > ?", [int(after) if after else 0]
        if deal_id is not None:
            where += " AND deal_id = ?"
            args.append(deal_id)
        with self._db.reading() as conn:
            rows = conn.execute(
                f"SELECT event_id, payload FROM outbox WHERE {where} ORDER BY event_id LIMIT ?",
                (*args, -1 if limit is None else limit),
            ).fetchall()
        return [_event(event_id, payload) for event_id, payload in rows]

    def lease_outbox(self, consumer: str, limit: int = 100, lease_seconds: float = 30.0) -> list[OutboxEvent]:
        now = self._clock()
        with self._db.transaction() as tx:
            rows = tx.execute(
                "SELECT event_id, payload FROM outbox WHERE lease_until IS NULL OR lease_until < ?"
                " ORDER BY event_id LIMIT ?",
                (now, limit),
            ).fetchall()
            tx.executemany(
                "UPDATE outbox SET leased_by = ?, lease_until = ? WHERE event_id = ?",
                [(consumer, now + lease_seconds, event_id) for event_id, _ in rows],
            )
        return [_event(event_id, payload) for event_id, payload in rows]

    def ack_outbox(self, event_ids: Iterable[str]) -> None:
        ids = [(int(event_id),) for event_id in event_ids]
        with self._db.transaction() as tx:
            tx.executemany("DELETE FROM outbox WHERE event_id = ?", ids)

    def add_event(self, deal_id: str, payload: dict[str, Any]) -> None:
        with self._db.transaction() as tx:
            _append_event(tx, deal_id, payload, self._clock())

    def outbox_backlog(self) -> OutboxBacklog:
        # MIN skips the events an older version wrote without added_at: they count, ageless.
        with self._db.reading() as conn:
            events, oldest_at = conn.execute("SELECT COUNT(*), MIN(added_at) FROM outbox").fetchone()
        return OutboxBacklog(events, oldest_at)

    def check(self) -> None:
        check_claim_step(self)

    def close(self) -> None:
        self._db.close()
        self._rates.close()
