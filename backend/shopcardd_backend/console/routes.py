"""The console's pages: thin adapters that render the use cases' answers as HTML.

Pages are plain ``def`` routes (the store is synchronous; FastAPI runs them in its thread pool).
Every change is a POST of a form that carries the session's CSRF token; a destructive one
(cancel a deal, revoke a counter or a voucher) is asked for on a confirmation page first.
A request without a live session is sent to the sign-in page (htmx polls get ``HX-Redirect``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from ..api.models import DealCreate
from ..deals import DealNotFound, DealService, NotYourDeal
from ..devices import DeviceNotFound, DeviceService, NotYourDevice, NotYourVoucher, VoucherNotFound
from ..merchants import MAX_KEY_GRACE_SECONDS, MerchantService
from ..runtime import Runtime
from ..stats import deal_figures
from ..storage import TransientError
from .sessions import ConsoleSessions, SignedIn, TooManyWrongKeys, WrongKey, csrf_matches, csrf_token

HERE: Final = Path(__file__).parent
SESSION_COOKIE: Final = "shopcardd_console"
SIGN_IN_COOKIE: Final = "shopcardd_console_sign_in"
"""A random value of the sign-in form alone: its CSRF token is derived from it."""
PATH: Final = "/console"
GRACE_CHOICES: Final = (
    (0, "none: the old key stops now"),
    (3600, "1 hour"),
    (86_400, "1 day"),
    (604_800, "7 days"),
)
STATUS_WORDS: Final = {
    "scheduled": "Scheduled",
    "active": "Active",
    "sold_out": "Sold out",
    "ended": "Ended",
    "cancelled": "Cancelled",
}
CHANNEL_WORDS: Final = {"email": "Emails", "sms": "SMS"}
"""A notice channel as the live page names its counts (``Emails sent``, ``SMS refused``)."""
router = APIRouter(prefix=PATH, include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


class SignInRequired(Exception):
    """No live session: the page sends the browser to sign in."""


class FormRefused(Exception):
    """A form posted without the CSRF token of the session (or of the sign-in form)."""


class NotFoundPage(Exception):
    """A deal, counter or voucher that is not the merchant's: ``str(exc)`` says which."""


def install_console(app: FastAPI) -> None:
    """Mount the console and its static files on the API's app."""
    app.mount(f"{PATH}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.add_exception_handler(SignInRequired, _to_sign_in)
    app.add_exception_handler(FormRefused, _form_refused)
    app.add_exception_handler(NotFoundPage, _not_found_page)


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _sessions(request: Request) -> ConsoleSessions:
    """One ``ConsoleSessions`` per runtime (the wrong-key counts it remembers live with it)."""
    runtime = _runtime(request)
    made = getattr(request.app.state, "console_sessions", None)
    if made is None or made[0] is not runtime:
        settings = runtime.settings
        sessions = ConsoleSessions(
            runtime.store,
            runtime.rate_counter,
            settings.console_session_seconds,
            settings.console_sign_in_attempts,
            settings.console_sign_in_window_seconds,
        )
        made = request.app.state.console_sessions = (runtime, sessions)
    return made[1]


def signed_in(request: Request) -> SignedIn:
    session = _sessions(request).signed_in(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    return session


Session = Annotated[SignedIn, Depends(signed_in)]


def checked_form(request: Request, session: Session, csrf: Annotated[str | None, Form()] = None) -> SignedIn:
    """The session of a form post that carries its CSRF token; ``FormRefused`` otherwise."""
    if not csrf_matches(session.token, csrf):
        raise FormRefused
    return session


Posted = Annotated[SignedIn, Depends(checked_form)]


def _deals(request: Request) -> DealService:
    return _runtime(request).deals


def _merchants(request: Request) -> MerchantService:
    return _runtime(request).merchants


def _devices(request: Request) -> DeviceService:
    return _runtime(request).devices


def page(
    request: Request, name: str, session: SignedIn | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context |= {
        "merchant": session.merchant_id if session else None,
        "csrf": csrf_token(session.token) if session else None,
        "status_words": STATUS_WORDS,
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    target = f"{PATH}/sign-in?next={quote(request.url.path)}"
    if request.headers.get("HX-Request"):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return _see(target)


def _bare(request: Request, name: str, status_code: int, **context: Any) -> Response:
    """A page without the signed-in menu (its session is not checked)."""
    context |= {"merchant": None, "csrf": None, "status_words": STATUS_WORDS, "path": request.url.path}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def _form_refused(request: Request, exc: Exception) -> Response:
    return _bare(request, "refused.html", 403)


# --- Sign-in and sign-out ---


def _sign_in_form(
    request: Request, error: str | None = None, status_code: int = 200, next_page: str | None = None
) -> HTMLResponse:
    secret = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)
    answer = _bare(
        request,
        "sign_in.html",
        status_code,
        sign_in_csrf=csrf_token(secret),
        error=error,
        next=_safe_next(next_page or request.query_params.get("next")),
    )
    _cookie(answer, request, SIGN_IN_COOKIE, secret, 3600)
    return answer


def _safe_next(target: str | None) -> str:
    """Only a console page: never another site (an open redirect)."""
    if target and target.startswith(f"{PATH}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PATH}/deals"


@router.get("", response_class=HTMLResponse)
def console_home() -> Response:
    return _see(f"{PATH}/deals")


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request) -> Response:
    return _sign_in_form(request)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str | None, Form()] = None,
    next_page: Annotated[str | None, Form(alias="next")] = None,
) -> Response:
    if not csrf_matches(request.cookies.get(SIGN_IN_COOKIE), csrf):
        raise FormRefused
    address = request.app.state.client_addresses(request.scope)
    try:
        session = await _sessions(request).sign_in(api_key, address)
    except WrongKey:
        return _sign_in_form(
            request,
            "That API key is not a merchant's key. Paste the whole key (it starts with sck_), "
            "as shopcardd-backend merchant create printed it.",
            401,
            next_page,
        )
    except TooManyWrongKeys as over:
        return _sign_in_form(
            request,
            f"Too many wrong keys from your address: try again in {over.retry_after} seconds.",
            429,
            next_page,
        )
    answer = _see(_safe_next(next_page))
    _cookie(
        answer, request, SESSION_COOKIE, session.token, _runtime(request).settings.console_session_seconds
    )
    answer.delete_cookie(SIGN_IN_COOKIE, path=PATH)
    return answer


@router.post("/sign-out")
def sign_out(request: Request, session: Posted) -> Response:
    _sessions(request).sign_out(session.token)
    answer = _see(f"{PATH}/sign-in")
    answer.delete_cookie(SESSION_COOKIE, path=PATH)
    return answer


# --- Deals ---

DEAL_FIELDS: Final = ("title", "stock", "per_user_limit", "voucher_ttl_seconds", "starts_at", "ends_at")
WHOLE_NUMBERS: Final = ("stock", "per_user_limit", "voucher_ttl_seconds")


def _deal_list(request: Request, session: SignedIn) -> list[tuple[Any, Any]]:
    views, _ = _deals(request).list_views(session.merchant_id, 100)
    store = _runtime(request).store
    return [(view, store.voucher_counts(view.deal.deal_id)) for view in views]


def _relay_warning(request: Request) -> str | None:
    """Why the figures stand still when RabbitMQ is named and no relay drains the outbox."""
    runtime = _runtime(request)
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
    view = _deals(request).create(session.merchant_id, **terms.model_dump())
    return _see(f"{PATH}/deals/{view.deal.deal_id}")


@router.get("/deals/{deal_id}", response_class=HTMLResponse)
def deal_page(request: Request, session: Session, deal_id: str) -> Response:
    return page(request, "deal.html", session, **_figures(request, session, deal_id))


@router.get("/deals/{deal_id}/figures", response_class=HTMLResponse)
def deal_figures_part(request: Request, session: Session, deal_id: str) -> Response:
    """The live part of a deal's page, polled by htmx every 2 s."""
    return page(request, "deal_figures.html", session, **_figures(request, session, deal_id))


def _figures(request: Request, session: SignedIn, deal_id: str) -> dict[str, Any]:
    try:
        figures = deal_figures(_deals(request), deal_id, session.merchant_id)
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
    return page(
        request,
        "confirm.html",
        session,
        question=f"Cancel the deal “{deal.title}”?",
        explain="Every later claim is refused, and every counter refuses its vouchers after its next sync. "
        "This cannot be undone.",
        action=f"{PATH}/deals/{deal_id}/cancel",
        button="Cancel the deal",
        back=f"{PATH}/deals",
        back_label="Keep it",
    )


@router.post("/deals/{deal_id}/cancel")
def cancel_deal(request: Request, session: Posted, deal_id: str) -> Response:
    _merchant_deal(request, session, deal_id)
    # A deal the gate lost: the cancellation is recorded in the store all the same, and the
    # deal's page says it cannot be read until it is rebuilt.
    with contextlib.suppress(TransientError):
        _deals(request).cancel(deal_id, session.merchant_id)
    return _see(f"{PATH}/deals")


def _merchant_deal(request: Request, session: SignedIn, deal_id: str) -> Any:
    try:
        return _merchants(request).own_deal(session.merchant_id, deal_id)
    except (DealNotFound, NotYourDeal) as exc:
        raise NotFoundPage(f"No deal {deal_id!r} of yours.") from exc


# --- Counters ---


@router.get("/counters", response_class=HTMLResponse)
def counters_page(request: Request, session: Session) -> Response:
    settings = _runtime(request).settings
    backend = settings.device_audience or str(request.base_url).rstrip("/")
    return page(
        request,
        "counters.html",
        session,
        counters=_merchants(request).counters(session.merchant_id),
        backend=backend,
        now=datetime.now(UTC),
    )


@router.get("/counters/{device_id}/revoke", response_class=HTMLResponse)
def revoke_counter_page(request: Request, session: Session, device_id: str) -> Response:
    return page(
        request,
        "confirm.html",
        session,
        question=f"Revoke the counter {device_id}?",
        explain="Its syncs are refused from now on; enrol it again under a new id to use it again.",
        action=f"{PATH}/counters/{device_id}/revoke",
        button="Revoke the counter",
        back=f"{PATH}/counters",
        back_label="Keep it",
    )


@router.post("/counters/{device_id}/revoke")
def revoke_counter(request: Request, session: Posted, device_id: str) -> Response:
    try:
        _devices(request).revoke(session.merchant_id, device_id)
    except (DeviceNotFound, NotYourDevice) as exc:
        raise NotFoundPage(f"No counter {device_id!r} of yours.") from exc
    return _see(f"{PATH}/counters")


# --- Conflicts ---


@router.get("/conflicts", response_class=HTMLResponse)
def conflicts_page(request: Request, session: Session) -> Response:
    groups = _devices(request).conflicts(session.merchant_id, 100)
    return page(request, "conflicts.html", session, conflicts=groups)


# --- Vouchers ---


@router.get("/vouchers", response_class=HTMLResponse)
def vouchers_page(
    request: Request, session: Session, voucher_id: Annotated[str, Query(max_length=64)] = ""
) -> Response:
    story, error = None, None
    voucher_id = voucher_id.strip()
    if voucher_id:
        try:
            story = _merchants(request).voucher(session.merchant_id, voucher_id)
        except (VoucherNotFound, NotYourVoucher):
            error = (
                f"No voucher {voucher_id!r} of yours is stored. One issued moments ago shows once "
                "it has been saved; check the id otherwise."
            )
    status = 404 if error else 200
    return page(request, "vouchers.html", session, status, voucher_id=voucher_id, story=story, error=error)


@router.get("/vouchers/{voucher_id}/revoke", response_class=HTMLResponse)
def revoke_voucher_page(request: Request, session: Session, voucher_id: str) -> Response:
    return page(
        request,
        "confirm.html",
        session,
        question=f"Revoke the voucher {voucher_id}?",
        explain="Every counter refuses it after its next sync. This cannot be undone.",
        action=f"{PATH}/vouchers/{voucher_id}/revoke",
        button="Revoke the voucher",
        back=f"{PATH}/vouchers?voucher_id={quote(voucher_id)}",
        back_label="Keep it",
    )


@router.post("/vouchers/{voucher_id}/revoke")
def revoke_voucher(request: Request, session: Posted, voucher_id: str) -> Response:
    try:
        _devices(request).revoke_voucher(session.merchant_id, voucher_id)
    except (VoucherNotFound, NotYourVoucher) as exc:
        raise NotFoundPage(f"No voucher {voucher_id!r} of yours is stored.") from exc
    return _see(f"{PATH}/vouchers?voucher_id={quote(voucher_id)}")


# --- Keys ---


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, session: Session) -> Response:
    return page(request, "keys.html", session, choices=GRACE_CHOICES, new_key=None)


@router.post("/keys", response_class=HTMLResponse)
def rotate_key(
    request: Request,
    session: Posted,
    grace_seconds: Annotated[int, Form(ge=0, le=MAX_KEY_GRACE_SECONDS)] = 3600,
) -> Response:
    api_key, until = _merchants(request).rotate_key(session.merchant_id, grace_seconds)
    answer = page(request, "keys.html", session, choices=GRACE_CHOICES, new_key=api_key, old_until=until)
    answer.headers["Cache-Control"] = "no-store"  # the key is shown once: no copy in a cache
    return answer


async def _not_found_page(request: Request, exc: Exception) -> Response:
    return _bare(request, "not_found.html", 404, message=str(exc))
