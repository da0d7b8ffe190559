"""Request and response bodies: one model per purpose, so no stored-only field leaks out.

One module per resource; this package names them all, so ``from shopcardd_backend.api.models
import X`` finds any of them. Request models are strict (``fields.STRICT_REQUEST``).
"""

from __future__ import annotations

from .claims import ClaimCreate, VoucherPublic
from .deals import ENDS_AT_GRACE, DealCreate, DealList, DealPublic
from .devices import (
    DeviceCreate,
    DeviceIdentifier,
    DevicePublic,
    KeySetDown,
    Peer,
    RedemptionResultPublic,
    RedemptionUpload,
    RevocationsDown,
    SyncRequest,
    SyncResponse,
)
from .fields import EARLIEST_TIME, LATEST_TIME, STRICT_REQUEST, TIME_RANGE, Identifier, Instant, UtcDatetime
from .merchants import Conflict, ConflictList, CounterList, CounterPublic, KeyRotate, KeyRotated
from .service import JWKS, Health, OutboxState, ProblemDocument
from .stats import ClaimCounts, DealStatsPublic, MinuteClaims, NoticesSent
from .vouchers import (
    ConflictingRedemption,
    VoucherDetail,
    VoucherIssued,
    VoucherList,
    VoucherRevoke,
    VoucherRevoked,
)

__all__ = [
    "EARLIEST_TIME",
    "ENDS_AT_GRACE",
    "JWKS",
    "LATEST_TIME",
    "STRICT_REQUEST",
    "TIME_RANGE",
    "ClaimCounts",
    "ClaimCreate",
    "Conflict",
    "ConflictList",
    "ConflictingRedemption",
    "CounterList",
    "CounterPublic",
    "DealCreate",
    "DealList",
    "DealPublic",
    "DealStatsPublic",
    "DeviceCreate",
    "DeviceIdentifier",
    "DevicePublic",
    "Health",
    "Identifier",
    "Instant",
    "KeyRotate",
    "KeyRotated",
    "KeySetDown",
    "MinuteClaims",
    "NoticesSent",
    "OutboxState",
    "Peer",
    "ProblemDocument",
    "RedemptionResultPublic",
    "RedemptionUpload",
    "RevocationsDown",
    "SyncRequest",
    "SyncResponse",
    "UtcDatetime",
    "VoucherDetail",
    "VoucherIssued",
    "VoucherList",
    "VoucherPublic",
    "VoucherRevoke",
    "VoucherRevoked",
]
