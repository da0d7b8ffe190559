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
