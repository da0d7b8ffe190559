"""Claims: a user asks for one voucher of a deal; the answer is the signed voucher or why not.

Two adapters over one use case (``ClaimService.claim``: the rate limits, the token, the claim
step and the voucher's signature, in that order) and one mapping of its outcomes to HTTP
(``claim_voucher``). ``ClaimFastPath``
answers the claims a client sends as the API documents them (an empty body, ``Authorization:
Bearer TOKEN``, a well-formed ``Idempotency-Key``) as plain ASGI, in front of the whole FastAPI
app (``app.ClaimAPI``): FastAPI's routing, dependency solving and response model cost about as
much CPU as the claim itself, its middleware stack (error handling, telemetry, body limits,
entered and left on every request) a fifth more, and a flash sale is nearly all claims. Such a
claim has no body, so the body limits have nothing to bound; an unforeseen error is answered
and logged as the app's own handler does (``unexpected_answer``).
Every other claim request (a body, a missing or malformed header) goes on to the FastAPI route
``create_claim``, which validates it and answers as before; it also puts the claim in the
OpenAPI document. Both answer with the same bytes (``tests/backend/api/test_claim_fast_path.py``).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Final

from fastapi import APIRouter, Body, Response
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from ...claims import ClaimOutcome, ClaimService, IssuedVoucher
from ...ratelimits import OverLimit
from ...storage import TransientError
from ..deps import ClaimServiceDep, ClientAddress, DealId, IdempotencyKey, UserToken, challenge
from ..errors import Problem, answer, unavailable_answer, unexpected_answer
from ..models import ClaimCreate, VoucherPublic

router = APIRouter(prefix="/v1/deals", tags=["claims"])

_REFUSALS: dict[ClaimOutcome, tuple[str, str]] = {
    ClaimOutcome.SOLD_OUT: ("sold_out", "deal {deal} has no vouchers left"),
    ClaimOutcome.LIMIT_REACHED: (
        "limit_reached",
        "you already hold as many vouchers of deal {deal} as it allows",
    ),
    ClaimOutcome.SALE_NOT_OPEN: (
        "sale_not_open",
        "the sale of deal {deal} is not open (not started, ended or cancelled)",
    ),
    ClaimOutcome.UNKNOWN_DEAL: ("not_found", "no deal {deal!r}"),
}


def rate_limited(over: OverLimit) -> Problem:
    """The 429 of a claim over a rate limit."""
    detail = f"too many claims from this {over.which}; retry in {over.retry_after} s"
    return Problem("rate_limited", detail, headers={"Retry-After": str(over.retry_after)})


async def claim_voucher(
    service: ClaimService, deal_id: str, token: str, idempotency_key: str, address: str | None
) -> IssuedVoucher:
    """The claim's voucher, or the problem its outcome answers, raised."""
    result = await service.claim(deal_id, token, idempotency_key, address)
    if result.voucher is not None:
        return result.voucher
    outcome = result.outcome
    if outcome is ClaimOutcome.RATE_LIMITED and result.over is not None:
        raise rate_limited(result.over)
    if outcome is ClaimOutcome.UNAUTHORIZED:
        raise Problem("unauthorized", result.reason, headers=challenge())
    code, detail = _REFUSALS[outcome]
    raise Problem(code, detail.format(deal=deal_id[:100]))


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
        429: {
            "description": "rate_limited: too many claims from this user or client address; "
            "Retry-After says when the window ends (a retry of a claim already issued is still 200)",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
        503: {"description": "unavailable, with Retry-After"},
    },
)
async def create_claim(
    deal_id: DealId,
    token: UserToken,
    address: ClientAddress,
    idempotency_key: IdempotencyKey,
    service: ClaimServiceDep,
    response: Response,
    body: Annotated[ClaimCreate, Body(default_factory=ClaimCreate)],
) -> VoucherPublic:
    """Claim one voucher: 201 with a new voucher, 200 with the same voucher for a retry."""
    del body  # a claim has no fields; the body is validated to be empty or {} (null is refused)
    issued = await claim_voucher(service, deal_id, token, idempotency_key, address)
    if issued.replayed:
        response.status_code = 200
    return VoucherPublic.model_validate(issued, from_attributes=True)


PREFIX: Final = "/v1/deals/"
SUFFIX: Final = "/claims"
IDEMPOTENCY_KEY: Final = re.compile(rb"[\x21-\x7e]{1,128}")
"""What ``IdempotencyKey`` accepts (1 to 128 visible ASCII characters), on the raw header."""
JSON_HEADERS: Final = (b"content-type", b"application/json")
VOUCHER_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Made once: ``json.dumps`` with options builds an encoder on every call."""


class ClaimFastPath:
    """``POST /v1/deals/{deal_id}/claims`` as raw ASGI, for the requests it can answer exactly as
    the FastAPI route would (``answered``); the app answers every other request."""

    def __init__(self, state: State) -> None:
        self.state = state
        """The app's state: its ``runtime`` (set by the lifespan) and ``client_addresses``."""

    async def answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request when it is a claim this path takes; False, untouched, when not."""
        request = self._claim_of(scope)
        if request is None:
            return False
        deal_id, token, idempotency_key = request
        state = self.state
        try:
            address = state.client_addresses(scope)
            issued = await claim_voucher(state.runtime.claims, deal_id, token, idempotency_key, address)
        except Problem as problem:
            await answer(problem)(scope, receive, send)
            return True
        except TransientError as exc:
            await unavailable_answer(exc, scope["path"])(scope, receive, send)
            return True
        except Exception:
            await unexpected_answer(scope["path"])(scope, receive, send)
            raise  # as the app's own error middleware does: the server logs it and goes on
        body = VOUCHER_JSON.encode(
            {
                "voucher_id": issued.voucher_id,
                "token": issued.token,
                "deal_id": issued.deal_id,
                "merchant_id": issued.merchant_id,
                "expires_at": issued.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        ).encode()
        headers = [(b"content-length", str(len(body)).encode()), JSON_HEADERS]
        status = 200 if issued.replayed else 201
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    @staticmethod
    def _claim_of(scope: Scope) -> tuple[str, str, str] | None:
        """(deal id, bearer token, idempotency key) of a claim this path answers, else None:
        the route's own path and method, no body, and headers that FastAPI would parse to the
        very same values (the first of each name; ``Bearer`` and one token, unpadded)."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        deal_id = path[len(PREFIX) : -len(SUFFIX)]
        if not deal_id or "/" in deal_id:
            return None
        authorization = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name == b"idempotency-key":
                idempotency_key = value if idempotency_key is None else idempotency_key
            elif (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                return None  # a body: FastAPI validates it
        if authorization is None or idempotency_key is None or not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            return None
        token = authorization[7:].decode("latin-1")  # as Starlette decodes headers
        if authorization[:7] != b"Bearer " or not token or token != token.strip():
            return None
        return deal_id, token, idempotency_key.decode("ascii")
