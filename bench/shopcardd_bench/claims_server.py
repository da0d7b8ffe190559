"""The server ``shopcardd-bench claims`` measures: the backend's own app, plus a bare endpoint.

``python -m shopcardd_bench.claims_server --port P --workers N`` serves, through the same code
path as ``shopcardd-backend serve`` (``serve_api``), the app of ``create_app_from_env`` with
one more route, ``POST /bench/bare/deals/{deal_id}/claims``: the yardstick of issue 14, "a
naive async FastAPI endpoint doing the same work", written the way the framework's
documentation teaches, over plain library calls: a bearer dependency and a header parameter,
the user's token decoded and checked by PyJWT's ``jwt.decode`` on every request (with the
development identity key that ``user-token`` signs with), redis.asyncio with its defaults
(its cluster client on a Redis Cluster) evaluating the gate's own ``claim.lua``, the voucher
signed by ``jwt.encode``, a pydantic response model, FastAPI's routing, and served as such an
app is deployed: ``--server plain-uvicorn``, uvicorn as it comes, in processes of its own (the
API's ``serve`` tunes uvicorn's HTTP protocol, api/server.py). The bench reports the API CPU of
a real claim as a ratio to this one in the same run, so a busy machine moves both alike.
Mounted here only, never in the served API.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
import redis.asyncio
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from shopcardd_backend.app import create_app_from_env
from shopcardd_backend.gates.base import ClaimAttempt
from shopcardd_backend.gates.redis import claim_args, claim_script_source
from shopcardd_backend.gates.redis_client import cluster_client
from shopcardd_backend.identity import dev_identity_key
from shopcardd_voucher import Voucher, new_voucher_id

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
    state = request.app.state
    settings = runtime.settings
    if not hasattr(state, "bare_script"):
        identity = dev_identity_key(settings, create=False)  # the key user-token signs with
        state.bare_identity = (identity.private_key.public_key(), identity.alg)
        url = settings.redis_url
        client: Any
        if settings.redis_cluster:  # the URL may list several nodes: the gate's way of opening it
            client = cluster_client(url, asynchronous=True, decode_responses=True)
        else:
            client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        state.bare_script = client.register_script(claim_script_source())
    public_key, alg = state.bare_identity
    try:
        claims = jwt.decode(
            credentials.credentials,
            public_key,
            algorithms=[alg],
            issuer=settings.user_issuer,
            audience=settings.user_audience or None,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.PyJWTError as exc:
        raise HTTPException(401, str(exc)) from None
    user_id = str(claims["sub"])
    attempt = ClaimAttempt(deal_id, user_id, idempotency_key, new_voucher_id(), int(time.time()))
    outcome, record, _, merchant_id = await state.bare_script(
        keys=runtime.gate.deal_keys(deal_id), args=claim_args(attempt)
    )
    if outcome not in ("issued", "replayed"):
        raise HTTPException(409, outcome)
    issued_at, expires_at, voucher_id = record.split(" ", 2)
    voucher = Voucher(voucher_id, deal_id, user_id, merchant_id, int(issued_at), int(expires_at))
    key = runtime.signer.key
    token = jwt.encode(voucher.to_claims(), key.private_key, algorithm=key.alg, headers={"kid": key.kid})
    if outcome == "replayed":
        response.status_code = 200
    return BareVoucher(
        voucher_id=voucher_id,
        token=token,
        deal_id=deal_id,
        merchant_id=merchant_id,
        expires_at=datetime.fromtimestamp(voucher.expires_at, UTC),
    )


def create_bench_app() -> FastAPI:
    """The backend's app with the bare endpoint beside its routes (uvicorn's factory)."""
    app = create_app_from_env()
    app.include_router(router)
    return app


def serve_with_granian(host: str, port: int, workers: int) -> int:
    """The same app under granian (a Rust HTTP server, ASGI interface, uvloop): measured against
    uvicorn for the choice of server (docs/backend-api.md, "Throughput")."""
    from granian import Granian

    from shopcardd_backend.cli.serve import prepare_serving

    prepare_serving(host, port, workers)
    target = "shopcardd_bench.claims_server:create_bench_app"
    options = {"interface": "asgi", "workers": workers, "factory": True, "loop": "uvloop"}
    Granian(target, address=host, port=port, **options).serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    from shopcardd_backend.cli.common import CommandError
    from shopcardd_backend.cli.serve import serve_api

    parser = argparse.ArgumentParser(prog="python -m shopcardd_bench.claims_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("uvicorn", "plain-uvicorn", "granian"), default="uvicorn")
    args = parser.parse_args(argv)
    try:
        if args.server == "granian":
            return serve_with_granian(args.host, args.port, args.workers)
        factory = "shopcardd_bench.claims_server:create_bench_app"
        return serve_api(args.host, args.port, args.workers, factory, one_write=args.server == "uvicorn")
    except CommandError as exc:
        print(f"claims_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
