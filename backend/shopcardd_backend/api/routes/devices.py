"""Devices: a merchant enrols its counters and revokes them; a counter syncs. Thin adapters over
``DeviceService`` (``devices.py``)."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter
from pydantic import BaseModel

from ...devices import Redemption
from ..deps import (
    CurrentDevice,
    CurrentMerchant,
    DeviceId,
    DeviceServiceDep,
    MerchantServiceDep,
    RuntimeDep,
    SyncBody,
)
from ..models import (
    CounterList,
    CounterPublic,
    DeviceCreate,
    DevicePublic,
    SyncRequest,
    SyncResponse,
)

router = APIRouter(prefix="/v1/devices", tags=["devices"])
SYNC_PATH: Final = "/v1/devices/sync"
SYNC_MAX_BODY_BYTES: Final = 256 * 1024
"""A sync carries up to 500 redemptions (about 300 bytes each at most): more than the 16 KiB
every other body may have (``SHOPCARDD_MAX_BODY_BYTES``)."""


@router.post("", status_code=201, responses={401: {}, 403: {}, 409: {"description": "id taken"}, 422: {}})
def enrol_device(body: DeviceCreate, merchant: CurrentMerchant, devices: DeviceServiceDep) -> DevicePublic:
    """Enrol a counter of the key's merchant with the public half of its Ed25519 key."""
    device = devices.enrol(merchant, body.device_id, body.public_key, body.merchant_id)
    return DevicePublic.model_validate(device, from_attributes=True)


@router.get("", responses={401: {}, 503: {}})
def list_devices(merchant: CurrentMerchant, merchants: MerchantServiceDep) -> CounterList:
    """The merchant's counters, revoked ones too, by id: last sync, key set fresh or stale,
    redemptions reported, LAN peers."""
    return CounterList(devices=[CounterPublic.of(counter) for counter in merchants.counters(merchant)])


def _schema_inline(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` written in place, for ``openapi_extra`` (which
    adds nothing to the document's components)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


@router.post(
    SYNC_PATH.removeprefix("/v1/devices"),
    responses={401: {}, 413: {}, 422: {}, 503: {}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema_inline(SyncRequest)}},
        }
    },
)
def sync_device(
    device: CurrentDevice, body: SyncBody, devices: DeviceServiceDep, runtime: RuntimeDep
) -> SyncResponse:
    """One sync: the counter's redemptions up (idempotent), key set, revocations, peers and time
    down, all of it signed by the backend's trust key with the request's nonce. The body is read
    only once the device token is accepted (``SyncBody``)."""
    uploads = [Redemption(**upload.model_dump()) for upload in body.redemptions]
    answer = devices.sync(device, uploads, body.revocations_after)
    response = SyncResponse.model_validate(answer, from_attributes=True)
    told = {**response.model_dump(mode="json"), "nonce": body.nonce, "device_id": device.device_id}
    response.signed = runtime.trust.sign_answer(told)
    response.trust_chain = list(runtime.trust.links)
    return response


@router.post("/{device_id}/revoke", responses={401: {}, 403: {}, 404: {}})
def revoke_device(device_id: DeviceId, merchant: CurrentMerchant, devices: DeviceServiceDep) -> DevicePublic:
    """Revoke a counter: its sync is refused (401) from now on. Repeating it is harmless."""
    return DevicePublic.model_validate(devices.revoke(merchant, device_id), from_attributes=True)
