"""Claims: a user asks for one voucher of a deal; the answer is the signed voucher or why not."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from ...claims import ClaimRefused
from ...gates.base import Outcome
from ..deps import ClaimServiceDep, CurrentUser, DealId, IdempotencyKey
from ..errors import Problem
from ..models import ClaimCreate, VoucherPublic

router = APIRouter(prefix="/v1/deals", tags=["claims"])

_REFUSALS: dict[Outcome, tuple[str, str]] = {
    Outcome.SOLD_OUT: ("sold_out", "deal {deal} has no vouchers left"),
    Outcome.LIMIT_REACHED: ("limit_reached", "you already hold as many vouchers of deal {deal} as it allows"),
    Outcome.SALE_NOT_OPEN: (
        "sale_not_open",
        "the sale of deal {deal} is not open (not started, ended or cancelled)",
    ),
    Outcome.UNKNOWN_DEAL: ("not_found", "no deal {deal!r}"),
}


@router.post(
    "/{deal_id}/claims",
    status_code=201,
    responses={
        200: {"model": VoucherPublic, "description": "The same user and Idempotency-Key claimed before"},
        401: {},
        403: {"description": "sale_not_open"},
        404: {},
        409: {"description": "sold_out, limit_reached"},
        413: {},
        422: {},
        503: {"description": "unavailable, with Retry-After"},
    },
)
def create_claim(
    deal_id: DealId,
    user: CurrentUser,
    idempotency_key: IdempotencyKey,
    service: ClaimServiceDep,
    response: Response,
    body: Annotated[ClaimCreate, Body(default_factory=ClaimCreate)],
) -> VoucherPublic:
    """Claim one voucher: 201 with a new voucher, 200 with the same voucher for a retry."""
    del body  # a claim has no fields; the body is validated to be empty or {} (null is refused)
    try:
        issued = service.claim(deal_id, user, idempotency_key)
    except ClaimRefused as refused:
        code, detail = _REFUSALS[refused.outcome]
        raise Problem(code, detail.format(deal=deal_id[:100])) from None
    if issued.replayed:
        response.status_code = 200
    return VoucherPublic.model_validate(issued, from_attributes=True)
