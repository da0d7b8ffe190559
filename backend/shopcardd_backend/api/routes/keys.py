"""The voucher verification keys, for counter devices and anyone checking a voucher."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import RuntimeDep
from ..models import JWKS

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json", response_model=JWKS)
async def read_jwks(runtime: RuntimeDep) -> Any:
    """Every public key that signed, signs or is about to sign vouchers (RFC 7517 JWK Set), as
    the key folder's ``jwks.json`` holds it now."""
    return JSONResponse(runtime.published_keys.jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.get("/.well-known/shopcardd-trust-key.json")
async def read_trust_key(runtime: RuntimeDep) -> Any:
    """The public half of the key that signs sync answers (a JWK), which enrolment pins in the
    device's bundle. Fetched only over https (or on loopback): whoever answers this is trusted."""
    return JSONResponse(runtime.trust.public_jwk(), headers={"Cache-Control": "no-store"})
