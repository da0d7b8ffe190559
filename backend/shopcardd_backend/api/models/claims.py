"""A claim's body (empty) and the voucher it is answered with."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from .fields import STRICT_REQUEST


class ClaimCreate(BaseModel):
    """A claim carries nothing in its body (``{}`` or none): the deal is in the path, the user
    in the bearer token, the retry identity in the ``Idempotency-Key`` header."""

    model_config = STRICT_REQUEST


class VoucherPublic(BaseModel):
    voucher_id: str
    token: str
    """The signed voucher (compact JWS) to show as a QR code at the counter."""
    deal_id: str
    merchant_id: str
    expires_at: datetime
