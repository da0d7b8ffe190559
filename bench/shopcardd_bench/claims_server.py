"""The server ``shopcardd-bench claims`` measures: the backend's own app, plus a bare endpoint.

``python -m shopcardd_bench.claims_server --port P --workers N`` serves, through the same code
path as ``shopcardd-backend serve`` (``serve_api``), the app of ``create_app_from_env`` with one
more route, ``POST /bench/bare/deals/{deal_id}/claims``: the claim written as a naive async
FastAPI endpoint would be (a bearer dependency, a header parameter, a pydantic response model,
the framework's routing), doing the same work as the real claim (the token checked through the
same cache, the same atomic step of the gate, the voucher signed). The bench reports the API
CPU of a real claim as a ratio to this one, measured in the same run, so a busy machine moves
both alike. It is mounted here only, never in the served API.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from shopcardd_backend.app import create_app_from_env
from shopcardd_backend.claims import ClaimRefused
from shopcardd_backend.identity import Unauthorized

BARE_PATH = "/bench/bare/deals/{deal_id}/claims"
router = APIRouter()


class BareVoucher(BaseModel):
    voucher_id: str
    token: str
    deal_id: str
    merchant_id: str
    expires_at: datetime


@router.post(BARE_PATH, status_code=201, include_in_schema=False)
async def bare_claim(
    deal_id: str,
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(HTTPBearer())],
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=128)],
) -> BareVoucher:
    runtime: Any = request.app.state.runtime
    try:
        user = runtime.users.user(credentials.credentials)
    except Unauthorized as exc:
        raise HTTPException(401, str(exc)) from None
    try:
        issued = await runtime.claims.claim_async(deal_id, user, idempotency_key)
    except ClaimRefused as refused:
        raise HTTPException(409, str(refused.outcome)) from None
    if issued.replayed:
        response.status_code = 200
    return BareVoucher(
        voucher_id=issued.voucher_id,
        token=issued.token,
        deal_id=issued.deal_id,
        merchant_id=issued.merchant_id,
        expires_at=issued.expires_at.astimezone(UTC),
    )


def create_bench_app() -> FastAPI:
    """The backend's app with the bare endpoint beside its routes (uvicorn's factory)."""
    app = create_app_from_env()
    app.include_router(router)
    return app


def main(argv: list[str] | None = None) -> int:
    from shopcardd_backend.cli import CommandError, serve_api

    parser = argparse.ArgumentParser(prog="python -m shopcardd_bench.claims_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        return serve_api(args.host, args.port, args.workers, "shopcardd_bench.claims_server:create_bench_app")
    except CommandError as exc:
        print(f"claims_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
