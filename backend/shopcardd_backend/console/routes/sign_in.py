"""The sign-in and sign-out pages: a merchant's API key for a session cookie, and back."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from ..sessions import TooManyWrongKeys, WrongKey, csrf_matches, csrf_token
from .pages import (
    PATH,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    FormRefused,
    Posted,
    bare_page,
    runtime_of,
    see_other,
    sessions_of,
    set_cookie,
)

router = APIRouter()


def _sign_in_form(
    request: Request, error: str | None = None, status_code: int = 200, next_page: str | None = None
) -> HTMLResponse:
    secret = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)
    answer = bare_page(
        request,
        "sign_in.html",
        status_code,
        sign_in_csrf=csrf_token(secret),
        error=error,
        next=_safe_next(next_page or request.query_params.get("next")),
    )
    set_cookie(answer, request, SIGN_IN_COOKIE, secret, 3600)
    return answer


def _safe_next(target: str | None) -> str:
    """Only a console page: never another site (an open redirect)."""
    if target and target.startswith(f"{PATH}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PATH}/deals"


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
        session = await sessions_of(request).sign_in(api_key, address)
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
    answer = see_other(_safe_next(next_page))
    set_cookie(
        answer, request, SESSION_COOKIE, session.token, runtime_of(request).settings.console_session_seconds
    )
    answer.delete_cookie(SIGN_IN_COOKIE, path=PATH)
    return answer


@router.post("/sign-out")
def sign_out(request: Request, session: Posted) -> Response:
    sessions_of(request).sign_out(session.token)
    answer = see_other(f"{PATH}/sign-in")
    answer.delete_cookie(SESSION_COOKIE, path=PATH)
    return answer
