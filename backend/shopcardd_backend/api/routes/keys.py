"""The voucher verification keys, for counter devices and anyone checking a voucher."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import SignerDep
from ..models import JWKS

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json", response_model=JWKS)
async def read_jwks(signer: SignerDep) -> Any:
    """Every public key that signed or signs vouchers (RFC 7517 JWK Set)."""
    return JSONResponse(signer.jwks, headers={"Cache-Control": "public, max-age=300"})
