"""The deals pages: the list and the form that starts a sale, a deal's live figures, its cancellation."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from ...api.models import DealCreate
from ...deals import DealNotFound, NotYourDeal
from ...stats import deal_figures
from ...storage import TransientError
from ..sessions import SignedIn
from .pages import (
    PATH,
    NotFoundPage,
    Posted,
    Session,
    confirm_page,
    deals_of,
    merchants_of,
    page,
    runtime_of,
    see_other,
)

CHANNEL_WORDS: Final = {"email": "Emails", "sms": "SMS"}
"""A notice channel as the live page names its counts (``Emails sent``, ``SMS refused``)."""
DEAL_FIELDS: Final = ("title", "stock", "per_user_limit", "voucher_ttl_seconds", "starts_at", "ends_at")
WHOLE_NUMBERS: Final = ("stock", "per_user_limit", "voucher_ttl_seconds")
router = APIRouter()


def _deal_list(request: Request, session: SignedIn) -> list[tuple[Any, Any]]:
    views, _ = deals_of(request).list_views(session.merchant_id, 100)
    store = runtime_of(request).store
    return [(view, store.voucher_counts(view.deal.deal_id)) for view in views]


def _relay_warning(request: Request) -> str | None:
    """Why the figures stand still when RabbitMQ is named and no relay drains the outbox."""
    runtime = runtime_of(request)
    return runtime.relay_warning(runtime.relay_backlog())


@router.get("/deals", response_class=HTMLResponse)
def deals_page(request: Request, session: Session) -> Response:
    deals = _deal_list(request, session)
    relay = _relay_warning(request)
    return page(request, "deals.html", session, deals=deals, form={}, errors={}, relay_warning=relay)


def _deal_terms(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's fields as the API's body (whole numbers as numbers, local times as UTC), and
    the fields that are not even that."""
    body: dict[str, Any] = {"title": form.get("title", "")}
    errors: dict[str, str] = {}
    for name in WHOLE_NUMBERS:
        text = form.get(name, "").strip()
        if not text.isdigit():
            errors[name] = "must be a whole number"
        else:
            body[name] = int(text)
    for name in ("starts_at", "ends_at"):
        text = form.get(name, "").strip()
        if text:
            body[name] = f"{text}:00Z" if len(text) == 16 else text  # datetime-local: minutes, in UTC
    return body, errors


@router.post("/deals", response_class=HTMLResponse)
def create_deal(
    request: Request,
    session: Posted,
    title: Annotated[str, Form(max_length=400)] = "",
    stock: Annotated[str, Form(max_length=40)] = "",
    per_user_limit: Annotated[str, Form(max_length=40)] = "",
    voucher_ttl_seconds: Annotated[str, Form(max_length=40)] = "",
    starts_at: Annotated[str, Form(max_length=40)] = "",
    ends_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    form = {
        "title": title,
        "stock": stock,
        "per_user_limit": per_user_limit,
        "voucher_ttl_seconds": voucher_ttl_seconds,
        "starts_at": starts_at,
        "ends_at": ends_at,
    }
    body, errors = _deal_terms(form)
    try:
        terms = DealCreate.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "title"
            errors.setdefault(name, error["msg"].removeprefix("Value error, "))
    if errors:
        deals = _deal_list(request, session)
        return page(request, "deals.html", session, 422, deals=deals, form=form, errors=errors)
    view = deals_of(request).create(session.merchant_id, **terms.model_dump())
    return see_other(f"{PATH}/deals/{view.deal.deal_id}")


@router.get("/deals/{deal_id}", response_class=HTMLResponse)
def deal_page(request: Request, session: Session, deal_id: str) -> Response:
    return page(request, "deal.html", session, **_figures(request, session, deal_id))


@router.get("/deals/{deal_id}/figures", response_class=HTMLResponse)
def deal_figures_part(request: Request, session: Session, deal_id: str) -> Response:
    """The live part of a deal's page, polled by htmx every 2 s."""
    return page(request, "deal_figures.html", session, **_figures(request, session, deal_id))


def _figures(request: Request, session: SignedIn, deal_id: str) -> dict[str, Any]:
    try:
        figures = deal_figures(deals_of(request), deal_id, session.merchant_id)
    except (DealNotFound, NotYourDeal) as exc:
        raise NotFoundPage(f"No deal {deal_id!r} of yours.") from exc
    except TransientError as exc:
        raise NotFoundPage(f"Deal {deal_id!r} cannot be read now: {exc}") from exc
    minutes = figures.stats.minutes
    # The curve starts a minute before the first claim, with the whole stock and no claim: the
    # truth, and one minute alone would stretch the chart's time axis over years.
    start = [int(minutes[0].minute.timestamp()) - 60] if minutes else []
    chart = {
        "minutes": start + [int(minute.minute.timestamp()) for minute in minutes],
        "issued": [0][: len(start)] + [minute.issued for minute in minutes],
        "refused": [0][: len(start)]
        + [minute.sold_out + minute.limit_reached + minute.sale_not_open for minute in minutes],
        "stock_left": [figures.view.deal.stock][: len(start)] + [left for _, left in figures.stock_curve],
    }
    return {
        "figures": figures,
        "chart": json.dumps(chart),
        "recent": figures.stats.minutes[-10:][::-1],
        "channel_words": CHANNEL_WORDS,
    }


@router.get("/deals/{deal_id}/cancel", response_class=HTMLResponse)
def cancel_deal_page(request: Request, session: Session, deal_id: str) -> Response:
    deal = _merchant_deal(request, session, deal_id)
    return confirm_page(
        request,
        session,
        question=f"Cancel the deal “{deal.title}”?",
        explain="Every later claim is refused, and every counter refuses its vouchers after its next sync. "
        "This cannot be undone.",
        action=f"{PATH}/deals/{deal_id}/cancel",
        button="Cancel the deal",
        back=f"{PATH}/deals",
    )


@router.post("/deals/{deal_id}/cancel")
def cancel_deal(request: Request, session: Posted, deal_id: str) -> Response:
    _merchant_deal(request, session, deal_id)
    # A deal the gate lost: the cancellation is recorded in the store all the same, and the
    # deal's page says it cannot be read until it is rebuilt.
    with contextlib.suppress(TransientError):
        deals_of(request).cancel(deal_id, session.merchant_id)
    return see_other(f"{PATH}/deals")


def _merchant_deal(request: Request, session: SignedIn, deal_id: str) -> Any:
    try:
        return merchants_of(request).own_deal(session.merchant_id, deal_id)
    except (DealNotFound, NotYourDeal) as exc:
        raise NotFoundPage(f"No deal {deal_id!r} of yours.") from exc
