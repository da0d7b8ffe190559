"""The SQLite store's tables, made at opening when missing, and the columns a file made by an
older version lacks."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id TEXT PRIMARY KEY,
    api_key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deals (
    deal_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    title TEXT NOT NULL,
    stock INTEGER NOT NULL,
    per_user_limit INTEGER NOT NULL,
    voucher_ttl_seconds INTEGER NOT NULL,
    starts_at TEXT,
    ends_at TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deals_by_merchant_newest ON deals (merchant_id, created_at, deal_id);
CREATE TABLE IF NOT EXISTS vouchers (
    voucher_id TEXT PRIMARY KEY,
    deal_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    UNIQUE (deal_id, user_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS vouchers_by_deal ON vouchers (deal_id, issued_at);
CREATE TABLE IF NOT EXISTS claim_tallies (
    event_id TEXT PRIMARY KEY,
    deal_id TEXT NOT NULL,
    minute TEXT NOT NULL,
    issued INTEGER NOT NULL,
    sold_out INTEGER NOT NULL,
    limit_reached INTEGER NOT NULL,
    sale_not_open INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS claim_tallies_by_deal ON claim_tallies (deal_id, minute);
CREATE TABLE IF NOT EXISTS notices (
    voucher_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    deal_id TEXT,
    outcome TEXT,
    PRIMARY KEY (voucher_id, channel)
);
"""
NOTICE_COLUMNS_ADDED = {"deal_id": "TEXT", "outcome": "TEXT"}
"""Columns a ``notices`` table made by an older version lacks; added at opening (its notices
keep no deal, so they are counted in no deal's figures)."""
NOTICE_INDEXES = """
CREATE INDEX IF NOT EXISTS notices_by_deal ON notices (deal_id, channel, outcome);
"""
DEVICE_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    status TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS devices_by_merchant ON devices (merchant_id, device_id);
CREATE UNIQUE INDEX IF NOT EXISTS one_device_per_key ON devices (json_extract(public_key, '$.x'));
CREATE TABLE IF NOT EXISTS redemptions (
    voucher_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    redeemed_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    user_id TEXT,
    expires_at TEXT,
    PRIMARY KEY (voucher_id, device_id)
);
CREATE INDEX IF NOT EXISTS redemptions_by_merchant ON redemptions (merchant_id, voucher_id);
CREATE TABLE IF NOT EXISTS revocations (
    merchant_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    PRIMARY KEY (merchant_id, seq),
    UNIQUE (merchant_id, kind, target_id)
);
CREATE TABLE IF NOT EXISTS used_device_tokens (
    token_key TEXT PRIMARY KEY,
    keep_until TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS used_device_tokens_by_time ON used_device_tokens (keep_until);
"""
MERCHANT_VIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_syncs (
    device_id TEXT PRIMARY KEY,
    last_sync_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS redemptions_by_deal ON redemptions (deal_id, voucher_id);
CREATE TABLE IF NOT EXISTS retired_api_keys (
    api_key_hash TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    valid_until TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_time ON console_sessions (expires_at);
"""
