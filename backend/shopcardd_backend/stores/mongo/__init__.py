"""The scaled document store: MongoDB through pymongo.

Collections (each record's id is its ``_id``, the other fields keep their names):

- ``merchants``: ``_id`` merchant id; unique index ``api_key_hash``.
- ``deals``: ``_id`` deal id; index ``(merchant_id, created_at, _id)`` for a merchant's list.
- ``vouchers``: ``_id`` the voucher id, i.e. the token's ``jti``; index ``(deal_id, issued_at)``
  for rebuilding the gate and counting a deal's claims issued per minute, unique index
  ``(deal_id, user_id, idempotency_key)``: one voucher per claim, whatever the relay redelivers.
- ``claim_tallies``: ``_id`` the event's id (one record per ``claims.refused`` event: a
  redelivery inserts nothing); index ``(deal_id, minute)``: a deal's refusals are one
  aggregation over it (its claims issued, one over its vouchers).
- ``notices``: ``_id`` ``"<voucher id>/<channel>"``: a notice taken for sending, with its
  ``deal_id``, ``channel`` and ``outcome`` (``sent``, ``refused``; none while being sent);
  index ``(deal_id, channel, outcome)``: a deal's notice counts are one aggregation over it.
- ``devices``: ``_id`` device id; index ``(merchant_id, _id)`` for a merchant's peers; unique
  index ``public_key.x``: one key, one device.
- ``redemptions``: unique index ``(merchant_id, voucher_id, device_id)``: one per voucher and
  device, so a re-uploaded batch changes nothing.
- ``revocations``: unique indexes ``(merchant_id, seq)`` (the sync watermark, without gaps) and
  ``(merchant_id, kind, target_id)`` (revoking twice is harmless).
- ``device_token_ids``: ``_id`` ``"DEVICE JTI"``; a TTL index on ``keep_until`` forgets used ids.

``ensure_indexes()`` creates them; call it at start-up (the app's lifespan), never at import.
The client is made in the constructor, so each worker process makes its own after the fork;
pymongo connects lazily, and a short server selection timeout turns an outage into a prompt
``StoreUnavailable``. The write concern comes from the URI (``w=majority&journal=true`` on a
replica set). The reads that may lag a little (a deal's stats, a merchant's deals and conflicts)
go where ``stale_reads`` says (``SHOPCARDD_MONGODB_READ_PREFERENCE``); every other read goes to
the primary, since it reads what was just written.

Sharded layout (documented, not testable on SecantusDB): ``vouchers`` and ``redemptions`` are
sharded on ``{merchant_id: "hashed"}``: a merchant's counters read their vouchers from one shard,
and hashing spreads a big merchant's flash sale over all shards. ``_id`` stays globally
unique because it is 128 random bits, but a unique index must contain the shard key, so on a
sharded cluster the ``(deal_id, user_id, idempotency_key)`` index becomes
``(merchant_id, deal_id, user_id, idempotency_key)`` (a deal belongs to one merchant, so the
guarantee is the same). ``merchants`` and ``deals`` are small and stay unsharded on the primary
shard. ``claim_tallies`` is sharded on ``{deal_id: "hashed"}``: a deal's statistics read one
shard, and a redelivered event (same deal, same shard) still meets its ``_id`` there.
``notices`` is sharded on ``{_id: "hashed"}`` (a deal's notice counts then ask every shard,
each on its own index; so do its claims issued, counted on the vouchers' ``(deal_id, issued_at)``
index of each shard). Lookups by ``_id`` alone (a voucher by its ``jti``)
are scatter-gather there; the device sync path always knows the merchant and includes it.

The adapter is one class made of one module per idea: ``connection.py`` (the client, the
collections and their indexes, errors mapped to ours), ``deals.py`` (merchants, deals and
vouchers), ``stats.py`` (claim tallies and notices), ``devices.py`` (the ``DeviceRecords`` port:
device enrolment and sync) and ``merchant_views.py`` (the ``MerchantViews`` port: the merchant's
reads, API key rotation and console sessions).
"""

from __future__ import annotations

from .connection import DUPLICATE_KEY, READ_PREFERENCES, TRANSIENT, ReadPreference
from .deals import DealCollections
from .devices import DeviceCollections
from .merchant_views import MerchantViewCollections
from .stats import StatsCollections


class MongoDocumentStore(DealCollections, StatsCollections, DeviceCollections, MerchantViewCollections):
    """``DocumentStore`` on the MongoDB database ``database`` at ``uri``."""


__all__ = [
    "DUPLICATE_KEY",
    "READ_PREFERENCES",
    "TRANSIENT",
    "MongoDocumentStore",
    "ReadPreference",
]
