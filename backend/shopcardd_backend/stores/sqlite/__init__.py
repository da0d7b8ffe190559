"""The embedded document store: merchants, deals and vouchers in one SQLite file.

Opened through ``storage.py`` (WAL, ``synchronous=FULL``, busy timeout, a lock for the
threads of one process), so several API processes may share the file. Times are stored as
ISO 8601 text in UTC with milliseconds, which also sorts in time order. Tables mirror the
Mongo collections: ``merchants`` (``api_key_hash`` unique), ``deals`` (indexed by merchant),
``vouchers`` (indexed by deal; one voucher per deal, user and idempotency key),
``claim_tallies`` (one row per event, indexed by deal and minute), ``notices`` (one row per
voucher and channel taken, with its deal and outcome, indexed by deal); for device sync
``devices``, ``redemptions`` (one per voucher and device), ``revocations`` (numbered per
merchant) and ``used_device_tokens``.

The adapter is one class made of one module per idea: ``schema.py`` (the tables),
``connection.py`` (opening the file, records to rows and back), ``deals.py`` (merchants, deals and
vouchers), ``stats.py`` (claim tallies and notices), ``devices.py`` (the ``DeviceRecords`` port:
device enrolment and sync) and ``merchant_views.py`` (the ``MerchantViews`` port: the merchant's
reads, API key rotation and console sessions).
"""

from __future__ import annotations

from .connection import JSON_COLUMNS
from .deals import DealTables
from .devices import DeviceTables
from .merchant_views import MerchantViewTables
from .schema import DEVICE_SCHEMA, MERCHANT_VIEW_SCHEMA, NOTICE_COLUMNS_ADDED, NOTICE_INDEXES, SCHEMA
from .stats import StatsTables


class SqliteDocumentStore(DealTables, StatsTables, DeviceTables, MerchantViewTables):
    """``DocumentStore`` on one SQLite file."""


__all__ = [
    "DEVICE_SCHEMA",
    "JSON_COLUMNS",
    "MERCHANT_VIEW_SCHEMA",
    "NOTICE_COLUMNS_ADDED",
    "NOTICE_INDEXES",
    "SCHEMA",
    "SqliteDocumentStore",
]
