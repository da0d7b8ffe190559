"""The ledger: the device's SQLite file of redemptions, rejections, keys, revocations and time.

Durability is the point. The file runs in WAL mode with ``synchronous=FULL``, so a commit
that returned survives a power cut; the accept signal is given only after that commit. The
voucher id is the primary key of ``redemptions``: two scans racing for one voucher (two
processes, two threads) cannot both insert, and the loser is told ``already_redeemed``.
Rejections go to their own table with the reason (as pretix keeps failed check-ins), so a
rejected scan never blocks a later valid one. A rejection keeps a short fingerprint of the code,
never the code itself, and the voucher id of a genuine voucher: a stolen ledger holds no voucher
that another counter, or this one later, would accept. The table is capped (oldest rows go first;
``max_rejections``) and the counts by reason are kept apart, exact: a phone cycling junk codes
cannot fill the SD card, after which nothing could be recorded.

The ledger is also the device's one source of the key set (seeded from the ``keyset`` file,
replaced by each sync), its revocations, its peers and its time floor. ``apply_sync`` writes
all a sync brought in one transaction, so a sync cut off at any point leaves the ledger as it
was or as the backend confirmed it, never half-way. Redemptions are numbered (``seq``) as
they are recorded; the upload watermark is the last number the backend confirmed, so the next
sync starts where the last confirmed batch ended (trusted times are no order: a sync may set
the floor back). Synced redemptions go only when their voucher expired by the server's time of
a sync, never by the word of the device's own clock.
"""

from __future__ import annotations

from .base import BUSY_TIMEOUT_MS, FILE_MODE, NO_SPACE_BYTES
from .lan import LanPeer, LanRecord, LanTables
from .redemptions import MAX_DETAIL_LENGTH, Redemption, RedemptionTables, Rejection
from .schema import (
    DEFAULT_MAX_REJECTIONS,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_VERSION,
)
from .sync import REJECTION_RETENTION_SECONDS, BackendVerdict, SyncFailure, SyncRecord, SyncState
from .trust import StoredKeys, TrustPin, TrustTables


class Ledger(RedemptionTables, TrustTables, SyncState, LanTables):
    """One SQLite ledger file; open one per thread (several may share the file).

    ``read_only`` (for ``status``) never writes, so it also reads a ledger on a read-only
    filesystem or in a folder this user may not write. ``max_rejections`` caps the rejection rows.
    ``device_id``: the ledger is this device's; the first device to open it writably records its
    id, and any other is refused (``LedgerOfAnotherDevice``).
    """


__all__ = [
    "BUSY_TIMEOUT_MS",
    "DEFAULT_MAX_REJECTIONS",
    "FILE_MODE",
    "MAX_DETAIL_LENGTH",
    "MIGRATIONS",
    "NO_SPACE_BYTES",
    "REJECTION_RETENTION_SECONDS",
    "SCHEMA",
    "SCHEMA_V2",
    "SCHEMA_V3",
    "SCHEMA_V4",
    "SCHEMA_V5",
    "SCHEMA_VERSION",
    "BackendVerdict",
    "LanPeer",
    "LanRecord",
    "Ledger",
    "Redemption",
    "Rejection",
    "StoredKeys",
    "SyncFailure",
    "SyncRecord",
    "TrustPin",
]
