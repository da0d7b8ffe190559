"""The vouchers page: look up a voucher's story, and revoke it."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from ...devices import NotYourVoucher, VoucherNotFound
from .pages import (
    PATH,
    NotFoundPage,
    Posted,
    Session,
    confirm_page,
    devices_of,
    merchants_of,
    page,
    see_other,
)

router = APIRouter()


@router.get("/vouchers", response_class=HTMLResponse)
def vouchers_page(
    request: Request, session: Session, voucher_id: Annotated[str, Query(max_length=64)] = ""
) -> Response:
    story, error = None, None
    voucher_id = voucher_id.strip()
    if voucher_id:
        try:
            story = merchants_of(request).voucher(session.merchant_id, voucher_id)
        except (VoucherNotFound, NotYourVoucher):
            error = (
                f"No voucher {voucher_id!r} of yours is stored. One issued moments ago shows once "
                "it has been saved; check the id otherwise."
            )
    status = 404 if error else 200
    return page(request, "vouchers.html", session, status, voucher_id=voucher_id, story=story, error=error)


@router.get("/vouchers/{voucher_id}/revoke", response_class=HTMLResponse)
def revoke_voucher_page(request: Request, session: Session, voucher_id: str) -> Response:
    return confirm_page(
        request,
        session,
        question=f"Revoke the voucher {voucher_id}?",
        explain="Every counter refuses it after its next sync. This cannot be undone.",
        action=f"{PATH}/vouchers/{voucher_id}/revoke",
        button="Revoke the voucher",
        back=f"{PATH}/vouchers?voucher_id={quote(voucher_id)}",
    )


@router.post("/vouchers/{voucher_id}/revoke")
def revoke_voucher(request: Request, session: Posted, voucher_id: str) -> Response:
    try:
        devices_of(request).revoke_voucher(session.merchant_id, voucher_id)
    except (VoucherNotFound, NotYourVoucher) as exc:
        raise NotFoundPage(f"No voucher {voucher_id!r} of yours is stored.") from exc
    return see_other(f"{PATH}/vouchers?voucher_id={quote(voucher_id)}")
