"""The console's pages: thin adapters that render the use cases' answers as HTML.

Pages are plain ``def`` routes (the store is synchronous; FastAPI runs them in its thread pool).
Every change is a POST of a form that carries the session's CSRF token; a destructive one
(cancel a deal, revoke a counter or a voucher) is asked for on a confirmation page first.
A request without a live session is sent to the sign-in page (htmx polls get ``HX-Redirect``).

One module per page (``sign_in``, ``deals``, ``counters`` with the conflicts, ``vouchers``,
``keys``), each with its own router; ``pages`` holds what they share. This module assembles the
one router at ``/console`` and mounts it with the static files.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from . import counters, deals, keys, sign_in, vouchers
from .pages import (
    HERE,
    PATH,
    FormRefused,
    NotFoundPage,
    SignInRequired,
    form_refused,
    not_found_page,
    see_other,
    to_sign_in,
)

router = APIRouter(prefix=PATH, include_in_schema=False)


@router.get("", response_class=HTMLResponse)
def console_home() -> Response:
    return see_other(f"{PATH}/deals")


for part in (sign_in, deals, counters, vouchers, keys):  # the order the routes are matched in
    router.include_router(part.router)


def install_console(app: FastAPI) -> None:
    """Mount the console and its static files on the API's app."""
    app.mount(f"{PATH}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(FormRefused, form_refused)
    app.add_exception_handler(NotFoundPage, not_found_page)
