"""Bounds every part of ShopCardd shares: the verifier enforces them, the backend stays inside them.

Kept apart from ``voucher`` so that ``keys`` (which ``voucher`` imports) can use them too.
"""

from __future__ import annotations

from typing import Final

MAX_VOUCHER_LIFETIME_SECONDS: Final = 366 * 86_400
"""The longest a voucher may live (``exp - iat``): the API's cap on a deal's ``voucher_ttl_seconds``
and the verifier's bound, so a leaked retired key cannot mint a voucher that lives for decades."""
MAX_TIMESTAMP: Final = 32_503_680_000
"""3000-01-01 UTC: no ``iat``, ``nbf`` or ``exp`` beyond it (nor below 0) is a time at all; the
bound keeps every date printable and every integer inside SQLite's 64 bits."""
MAX_LEEWAY_SECONDS: Final = 3600
"""The most clock leeway a counter may be configured with (``leeway_seconds``): past a voucher's
``exp`` by more, no counter accepts it, so no genuine redemption is that late."""
