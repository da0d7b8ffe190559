"""The closed list of verdicts a scan or a claim check can end in.

The device, the API and the merchant's audit log all speak these exact strings
(docs/architecture.md, "Contracts and their names"), so they live in one place.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a voucher was accepted or refused."""

    ACCEPTED = "accepted"
    BAD_FORMAT = "bad_format"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_MERCHANT = "wrong_merchant"
    REVOKED = "revoked"
    ALREADY_REDEEMED = "already_redeemed"
    CLOCK_UNTRUSTED = "clock_untrusted"

    @property
    def is_accepted(self) -> bool:
        return self is Reason.ACCEPTED
