"""Named dependencies: a route's signature shows everything it needs.

Dependencies that only look things up (or only compute, like checking a token's signature)
are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, a hop that
costs more than the lookup. Those that call a store are plain ``def`` (STYLE trap 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ..claims import ClaimService
from ..gates.base import ClaimGate
from ..identity import Unauthorized, UserTokenVerifier, hash_api_key
from ..settings import Settings
from ..signing import VoucherSigner
from ..stores.base import DocumentStore
from .errors import Problem


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the lifespan opened (``app.state.runtime``), for the dependencies below."""

    gate: ClaimGate
    store: DocumentStore
    signer: VoucherSigner
    users: UserTokenVerifier
    claims: ClaimService


_bearer = HTTPBearer(auto_error=False, description="The user's token from the identity provider")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The merchant's API key")


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_gate(runtime: RuntimeDep) -> ClaimGate:
    return runtime.gate


async def get_store(runtime: RuntimeDep) -> DocumentStore:
    return runtime.store


async def get_signer(runtime: RuntimeDep) -> VoucherSigner:
    return runtime.signer


async def get_claim_service(runtime: RuntimeDep) -> ClaimService:
    return runtime.claims


GateDep = Annotated[ClaimGate, Depends(get_gate)]
StoreDep = Annotated[DocumentStore, Depends(get_store)]
SignerDep = Annotated[VoucherSigner, Depends(get_signer)]
ClaimServiceDep = Annotated[ClaimService, Depends(get_claim_service)]


async def current_user(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The user id of the verified bearer token; 401 ``unauthorized`` otherwise."""
    if credentials is None:
        raise Problem(
            "unauthorized", "send the user's token: Authorization: Bearer TOKEN", headers=_challenge()
        )
    try:
        return runtime.users.user_id(credentials.credentials)
    except Unauthorized as exc:
        raise Problem("unauthorized", str(exc), headers=_challenge()) from None


def current_merchant(store: StoreDep, api_key: Annotated[str | None, Depends(_api_key)]) -> str:
    """The merchant whose API key this is; 401 ``unauthorized`` otherwise."""
    if not api_key:
        raise Problem("unauthorized", "send the merchant's API key: X-API-Key: KEY")
    merchant = store.merchant_for_key_hash(hash_api_key(api_key))
    if merchant is None:
        raise Problem("unauthorized", "the API key is not a merchant's key")
    return merchant


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


CurrentUser = Annotated[str, Depends(current_user)]
CurrentMerchant = Annotated[str, Depends(current_merchant)]
DealId = Annotated[str, Path(description="The deal's id")]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Chosen by the client per claim; the same key again returns the same voucher",
    ),
]
