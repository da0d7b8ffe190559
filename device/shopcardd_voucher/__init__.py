"""The ShopCardd voucher: one format for the backend that signs, the device that checks
and the provisioning host that makes keys.

    >>> from shopcardd_voucher import SigningKey, KeySet, issue, verify
    >>> key = SigningKey.generate("k1")
    >>> token = issue(key, deal="d1", merchant="m1", user="u1", ttl=3600)
    >>> verify(token, KeySet([key.verification_key()]), merchant="m1").reason
    <Reason.ACCEPTED: 'accepted'>

This package imports no other ``shopcardd_*`` package.
"""

from .keys import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Algorithm,
    InvalidKeyError,
    KeySet,
    SigningKey,
    VerificationKey,
)
from .limits import MAX_LEEWAY_SECONDS, MAX_TIMESTAMP, MAX_VOUCHER_LIFETIME_SECONDS
from .reasons import Reason
from .voucher import (
    DEFAULT_LEEWAY_SECONDS,
    ID_RULE,
    MAX_TOKEN_LENGTH,
    Verdict,
    Voucher,
    check_time,
    is_valid_id,
    issue,
    new_voucher_id,
    readable_time,
    rfc3339_time,
    sign,
    verify,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "DEFAULT_LEEWAY_SECONDS",
    "ID_RULE",
    "MAX_LEEWAY_SECONDS",
    "MAX_TIMESTAMP",
    "MAX_TOKEN_LENGTH",
    "MAX_VOUCHER_LIFETIME_SECONDS",
    "Algorithm",
    "InvalidKeyError",
    "KeySet",
    "Reason",
    "SigningKey",
    "Verdict",
    "VerificationKey",
    "Voucher",
    "check_time",
    "is_valid_id",
    "issue",
    "new_voucher_id",
    "readable_time",
    "rfc3339_time",
    "sign",
    "verify",
]
