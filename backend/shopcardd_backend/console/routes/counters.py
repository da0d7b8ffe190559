"""The counters page (enrolled counters, revoking one) and the conflicts their redemptions made."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ...devices import DeviceNotFound, NotYourDevice
from .pages import (
    PATH,
    NotFoundPage,
    Posted,
    Session,
    confirm_page,
    devices_of,
    merchants_of,
    page,
    runtime_of,
    see_other,
)

router = APIRouter()


@router.get("/counters", response_class=HTMLResponse)
def counters_page(request: Request, session: Session) -> Response:
    settings = runtime_of(request).settings
    backend = settings.device_audience or str(request.base_url).rstrip("/")
    return page(
        request,
        "counters.html",
        session,
        counters=merchants_of(request).counters(session.merchant_id),
        backend=backend,
        now=datetime.now(UTC),
    )


@router.get("/counters/{device_id}/revoke", response_class=HTMLResponse)
def revoke_counter_page(request: Request, session: Session, device_id: str) -> Response:
    return confirm_page(
        request,
        session,
        question=f"Revoke the counter {device_id}?",
        explain="Its syncs are refused from now on; enrol it again under a new id to use it again.",
        action=f"{PATH}/counters/{device_id}/revoke",
        button="Revoke the counter",
        back=f"{PATH}/counters",
    )


@router.post("/counters/{device_id}/revoke")
def revoke_counter(request: Request, session: Posted, device_id: str) -> Response:
    try:
        devices_of(request).revoke(session.merchant_id, device_id)
    except (DeviceNotFound, NotYourDevice) as exc:
        raise NotFoundPage(f"No counter {device_id!r} of yours.") from exc
    return see_other(f"{PATH}/counters")


@router.get("/conflicts", response_class=HTMLResponse)
def conflicts_page(request: Request, session: Session) -> Response:
    groups = devices_of(request).conflicts(session.merchant_id, 100)
    return page(request, "conflicts.html", session, conflicts=groups)
