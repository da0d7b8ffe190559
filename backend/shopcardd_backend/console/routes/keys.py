"""The keys page: rotate the merchant's API key, the old one kept for a grace period."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from ...merchants import MAX_KEY_GRACE_SECONDS
from .pages import Posted, Session, merchants_of, page

GRACE_CHOICES: Final = (
    (0, "none: the old key stops now"),
    (3600, "1 hour"),
    (86_400, "1 day"),
    (604_800, "7 days"),
)
router = APIRouter()


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, session: Session) -> Response:
    return page(request, "keys.html", session, choices=GRACE_CHOICES, new_key=None)


@router.post("/keys", response_class=HTMLResponse)
def rotate_key(
    request: Request,
    session: Posted,
    grace_seconds: Annotated[int, Form(ge=0, le=MAX_KEY_GRACE_SECONDS)] = 3600,
) -> Response:
    api_key, until = merchants_of(request).rotate_key(session.merchant_id, grace_seconds)
    answer = page(request, "keys.html", session, choices=GRACE_CHOICES, new_key=api_key, old_until=until)
    answer.headers["Cache-Control"] = "no-store"  # the key is shown once: no copy in a cache
    return answer
