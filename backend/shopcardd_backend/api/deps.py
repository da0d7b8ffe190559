"""Named dependencies: a route's signature shows everything it needs.

Dependencies that only look things up (or only compute, like checking a token's signature)
are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, a hop that
costs more than the lookup. Those that call a store are plain ``def``: pymongo and sqlite3
block, and a blocking call in an ``async def`` would stall every request of the process.
"""

from __future__ import annotations

import email.message
import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from ..claims import ClaimService
from ..deals import DealService
from ..devices import DeviceService
from ..gates.base import ClaimGate
from ..identity import API_KEY_PREFIX, hash_api_key
from ..merchants import MerchantService
from ..runtime import Runtime
from ..settings import Settings
from ..signing import VoucherSigner
from ..stores.base import DeviceRecord, DocumentStore
from .errors import Problem
from .models import SyncRequest

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


async def get_deal_service(runtime: RuntimeDep) -> DealService:
    return runtime.deals


async def get_merchant_service(runtime: RuntimeDep) -> MerchantService:
    return runtime.merchants


GateDep = Annotated[ClaimGate, Depends(get_gate)]
MerchantServiceDep = Annotated[MerchantService, Depends(get_merchant_service)]
StoreDep = Annotated[DocumentStore, Depends(get_store)]
SignerDep = Annotated[VoucherSigner, Depends(get_signer)]
ClaimServiceDep = Annotated[ClaimService, Depends(get_claim_service)]
DealServiceDep = Annotated[DealService, Depends(get_deal_service)]


async def user_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The claim's bearer token, checked by the claim service (after the rate limit by address);
    401 ``unauthorized`` without one."""
    if credentials is None:
        raise Problem(
            "unauthorized", "send the user's token: Authorization: Bearer TOKEN", headers=challenge()
        )
    return credentials.credentials


async def client_address(request: Request) -> str | None:
    """The request's client address, as the claim rate limits count it (``api/addresses.py``)."""
    address: str | None = request.app.state.client_addresses(request.scope)
    return address


def current_merchant(
    request: Request, store: StoreDep, api_key: Annotated[str | None, Depends(_api_key)]
) -> str:
    """The merchant whose API key this is; 401 ``unauthorized`` otherwise."""
    if not api_key:
        sent_as_bearer = request.headers.get("authorization", "").startswith(f"Bearer {API_KEY_PREFIX}")
        where = " (it was sent as Authorization: Bearer; use the X-API-Key header)" if sent_as_bearer else ""
        raise Problem("unauthorized", f"send the merchant's API key: X-API-Key: KEY{where}")
    merchant = store.merchant_for_key_hash(hash_api_key(api_key))
    if merchant is None:
        raise Problem("unauthorized", "the API key is not a merchant's key")
    return merchant


def challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


# --- Devices (device enrolment and sync) ---

_device_bearer = HTTPBearer(
    auto_error=False, scheme_name="DeviceToken", description="A token signed by the device's enrolled key"
)


async def get_device_service(runtime: RuntimeDep) -> DeviceService:
    return runtime.devices


DeviceServiceDep = Annotated[DeviceService, Depends(get_device_service)]


def current_device(
    request: Request,
    settings: SettingsDep,
    devices: DeviceServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_device_bearer)],
) -> DeviceRecord:
    """The active device whose enrolled key signed the bearer token for this backend; the
    token's ``jti`` is used up. 401 ``unauthorized`` otherwise (``DeviceUnauthorized``)."""
    if credentials is None:
        raise Problem(
            "unauthorized", "send the device's token: Authorization: Bearer TOKEN", headers=challenge()
        )
    audience = settings.device_audience or str(request.base_url).rstrip("/")
    return devices.authenticate(credentials.credentials, audience)


CurrentDevice = Annotated[DeviceRecord, Depends(current_device)]
DeviceId = Annotated[str, Path(description="The device's id")]


M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def read_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, read and parsed only when called: a dependency placed
    after the one that authenticates, so an unauthenticated client cannot make this process parse
    a large body. Errors are FastAPI's own (the same 422 problem documents as a body parameter)."""
    raw = await request.body()
    document: Any = raw if raw else None
    if raw and _is_json(request.headers.get("content-type")):
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
            }
            raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from None
        except (UnicodeDecodeError, RecursionError):
            raise HTTPException(400, "There was an error parsing the body") from None
    if document is None:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors, body=document) from None


async def sync_request(request: Request) -> SyncRequest:
    return await read_body(request, SyncRequest)


SyncBody = Annotated[SyncRequest, Depends(sync_request)]
"""The sync's body; list it after ``CurrentDevice``, which must refuse a stranger before it is read."""

# --- end of the device block ---

UserToken = Annotated[str, Depends(user_token)]
ClientAddress = Annotated[str | None, Depends(client_address)]
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
