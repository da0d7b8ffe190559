"""What every console page shares: the session it needs, the form check, the templates, and the
three answers that are not a page of their own (sign in first, a form refused, not yours)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ...deals import DealService
from ...devices import DeviceService
from ...merchants import MerchantService
from ...runtime import Runtime
from ..sessions import ConsoleSessions, SignedIn, csrf_matches, csrf_token

HERE: Final = Path(__file__).parents[1]
"""The console's folder, with its templates/ and static/."""
SESSION_COOKIE: Final = "shopcardd_console"
SIGN_IN_COOKIE: Final = "shopcardd_console_sign_in"
"""A random value of the sign-in form alone: its CSRF token is derived from it."""
PATH: Final = "/console"
STATUS_WORDS: Final = {
    "scheduled": "Scheduled",
    "active": "Active",
    "sold_out": "Sold out",
    "ended": "Ended",
    "cancelled": "Cancelled",
}
templates = Jinja2Templates(directory=HERE / "templates")


class SignInRequired(Exception):
    """No live session: the page sends the browser to sign in."""


class FormRefused(Exception):
    """A form posted without the CSRF token of the session (or of the sign-in form)."""


class NotFoundPage(Exception):
    """A deal, counter or voucher that is not the merchant's: ``str(exc)`` says which."""


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def sessions_of(request: Request) -> ConsoleSessions:
    """One ``ConsoleSessions`` per runtime (the wrong-key counts it remembers live with it)."""
    runtime = runtime_of(request)
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
    session = sessions_of(request).signed_in(request.cookies.get(SESSION_COOKIE))
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


def deals_of(request: Request) -> DealService:
    return runtime_of(request).deals


def merchants_of(request: Request) -> MerchantService:
    return runtime_of(request).merchants


def devices_of(request: Request) -> DeviceService:
    return runtime_of(request).devices


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


def confirm_page(
    request: Request, session: SignedIn, *, question: str, explain: str, action: str, button: str, back: str
) -> HTMLResponse:
    """The confirmation a change that cannot be taken back asks for first: the question, what
    follows, the button that posts it to ``action`` and the way ``back`` that keeps things as they are."""
    return page(
        request,
        "confirm.html",
        session,
        question=question,
        explain=explain,
        action=action,
        button=button,
        back=back,
        back_label="Keep it",
    )


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def to_sign_in(request: Request, exc: Exception) -> Response:
    target = f"{PATH}/sign-in?next={quote(request.url.path)}"
    if request.headers.get("HX-Request"):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return see_other(target)


def bare_page(request: Request, name: str, status_code: int, **context: Any) -> Response:
    """A page without the signed-in menu (its session is not checked)."""
    context |= {"merchant": None, "csrf": None, "status_words": STATUS_WORDS, "path": request.url.path}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def form_refused(request: Request, exc: Exception) -> Response:
    return bare_page(request, "refused.html", 403)


async def not_found_page(request: Request, exc: Exception) -> Response:
    return bare_page(request, "not_found.html", 404, message=str(exc))
