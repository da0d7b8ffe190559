"""The ledger's schema, step by step: ``MIGRATIONS[n]`` takes a ledger file from version n to
n + 1, and ``SCHEMA_VERSION`` is where this software's ledgers stand.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Final

SCHEMA_VERSION: Final = 5


DEFAULT_MAX_REJECTIONS: Final = 10_000
"""Rejection rows kept (about 2 MB); older ones go first, their counts by reason stay."""


SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS redemptions (
    voucher_id  TEXT PRIMARY KEY,          -- one redemption per voucher, ever, on this device
    nonce       TEXT NOT NULL UNIQUE,      -- makes a re-upload at sync harmless
    device_id   TEXT NOT NULL,
    redeemed_at REAL NOT NULL,             -- trusted time of the scan
    clock_at    REAL NOT NULL,             -- the system clock's reading then
    deal        TEXT NOT NULL,
    user        TEXT NOT NULL,
    merchant    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    result      TEXT NOT NULL DEFAULT 'accepted',
    synced_at   REAL                       -- NULL until the backend has it
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS redemptions_unsynced ON redemptions (redeemed_at) WHERE synced_at IS NULL;
CREATE TABLE IF NOT EXISTS rejections (
    id          INTEGER PRIMARY KEY,
    nonce       TEXT NOT NULL UNIQUE,
    device_id   TEXT NOT NULL,
    scanned_at  REAL,                      -- trusted time; NULL when there was none
    clock_at    REAL NOT NULL,
    result      TEXT NOT NULL,             -- a reason code
    voucher_id  TEXT,                      -- when the code was a genuine voucher
    deal        TEXT,
    raw         TEXT NOT NULL,             -- schema 3: the code's fingerprint (inputs.fingerprint)
    detail      TEXT NOT NULL DEFAULT '',
    synced_at   REAL
);
CREATE INDEX IF NOT EXISTS rejections_unsynced ON rejections (id) WHERE synced_at IS NULL;
CREATE TABLE IF NOT EXISTS revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('voucher', 'deal')),
    value      TEXT NOT NULL,
    revoked_at REAL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    name  TEXT PRIMARY KEY,  -- time_floor, last_sync, keyset, sync_failure, device_id, trust_key, ...
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


SCHEMA_V2: Final = """
ALTER TABLE redemptions ADD COLUMN seq INTEGER;                -- recording order: the upload watermark
ALTER TABLE redemptions ADD COLUMN backend_status TEXT;        -- the backend's verdict: ok or conflict
ALTER TABLE redemptions ADD COLUMN first_device_id TEXT;       -- conflict: the device recorded first
ALTER TABLE redemptions ADD COLUMN first_redeemed_at REAL;     -- and when it redeemed the voucher
UPDATE redemptions SET seq = numbered.n FROM (
    SELECT voucher_id, row_number() OVER (ORDER BY redeemed_at, voucher_id) AS n FROM redemptions
) AS numbered WHERE numbered.voucher_id = redemptions.voucher_id;
CREATE UNIQUE INDEX redemptions_seq ON redemptions (seq);
DROP INDEX IF EXISTS redemptions_unsynced;
CREATE INDEX redemptions_synced_expiry ON redemptions (expires_at) WHERE synced_at IS NOT NULL;
INSERT INTO state (name, value) SELECT 'redemption_seq', CAST(count(*) AS TEXT) FROM redemptions
    WHERE true ON CONFLICT (name) DO NOTHING;
CREATE TABLE peers (
    device_id  TEXT PRIMARY KEY,                               -- the merchant's other counters
    public_key TEXT NOT NULL                                   -- their Ed25519 JWK (JSON)
) WITHOUT ROWID;
"""


SCHEMA_V3: Final = f"""
CREATE TABLE rejection_counts (
    result TEXT PRIMARY KEY,                                   -- a reason code
    count  INTEGER NOT NULL                                    -- every rejection ever recorded with it
) WITHOUT ROWID;
INSERT INTO rejection_counts (result, count) SELECT result, count(*) FROM rejections GROUP BY result;
DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - {DEFAULT_MAX_REJECTIONS};
UPDATE rejections SET raw = fingerprint(raw);                  -- no whole code stays in the ledger
"""
"""Counts first, then the rows past the cap go (before rewriting the rest: a table grown without
bound on a nearly full card is not copied whole into the write-ahead log)."""


SCHEMA_V4: Final = """
CREATE TABLE lan_redemptions (
    voucher_id  TEXT NOT NULL,                                 -- redeemed at a peer (the shop LAN)
    device_id   TEXT NOT NULL,                                 -- the peer that redeemed it (and signed)
    redeemed_at REAL NOT NULL,                                 -- its trusted time then
    deal        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,                              -- its number in the peer's ledger
    received_at REAL NOT NULL,
    PRIMARY KEY (voucher_id, device_id)
) WITHOUT ROWID;
CREATE TABLE lan_peers (
    device_id  TEXT PRIMARY KEY,                               -- a peer heard from on the LAN
    epoch      TEXT NOT NULL DEFAULT '',                       -- its ledger's identity (new ledger: new id)
    watermark  INTEGER NOT NULL DEFAULT 0,                     -- its seq up to which its records are held
    address    TEXT,                                           -- where it was last heard from
    last_heard REAL,
    received   INTEGER NOT NULL DEFAULT 0,                     -- records of it recorded here
    sent       INTEGER NOT NULL DEFAULT 0                      -- records of this device sent to it
) WITHOUT ROWID;
"""


SCHEMA_V5: Final = """
ALTER TABLE lan_peers ADD COLUMN heard_start INTEGER NOT NULL DEFAULT 0;  -- its last message's start number
ALTER TABLE lan_peers ADD COLUMN heard_count INTEGER NOT NULL DEFAULT 0;  -- and its count in that start
"""
"""The last message heard from each peer (``Lan``: an older one is a replay, whenever it was made)."""


MIGRATIONS: Final = (SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5)
"""The schema step by step: ``MIGRATIONS[n]`` takes a ledger from version n to n + 1."""


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (``executescript`` would commit first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:60]!r}")
