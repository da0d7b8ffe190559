"""Every error is an RFC 9457 problem document with a machine-readable ``code``.

``Problem`` is raised by the routes and dependencies; the handlers installed here also turn
FastAPI's validation errors, unknown routes, wrong methods, an unavailable gate or store and
any unforeseen exception into problem documents (the middlewares in ``middleware.py`` answer
with them too).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..deals import DealNotFound, NotYourDeal
from ..devices import (
    BadWatermark,
    DeviceIdTaken,
    DeviceKeyRefused,
    DeviceKeyTaken,
    DeviceNotFound,
    DeviceUnauthorized,
    NotYourDevice,
    NotYourVoucher,
    VoucherNotFound,
)
from ..merchants import MerchantNotFound
from ..storage import TransientError
from ..stores.base import BadCursor

PROBLEM_JSON: Final = "application/problem+json"
log = logging.getLogger("shopcardd_backend.api")

CODES: Final[dict[str, int]] = {
    "invalid_request": 422,
    "payload_too_large": 413,
    "request_timeout": 408,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "sale_not_open": 403,
    "sold_out": 409,
    "limit_reached": 409,
    "conflict": 409,
    "rate_limited": 429,
    "unavailable": 503,
    "internal_error": 500,
}
_CODE_OF_STATUS: Final = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class Problem(StarletteHTTPException):
    """An error answer: ``Problem("sold_out", "Deal d1 has no vouchers left")``."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(CODES[code], detail, headers)
        self.code = code
        self.extra = extra or {}


def problem_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
    return Response(json.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def unavailable(retry_after: int, detail: str) -> Problem:
    return Problem("unavailable", detail, headers={"Retry-After": str(retry_after)})


def answer(problem: Problem) -> Response:
    """The problem document of a raised ``Problem``."""
    detail = str(problem.detail)
    return problem_response(problem.status_code, problem.code, detail, problem.headers, problem.extra)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, Problem):
        return answer(exc)
    if exc.status_code == 400:  # FastAPI's "error parsing the body": one code, one status for bad input
        detail = "body: cannot be read as JSON (not UTF-8 text, or nested too deeply)"
        return problem_response(422, "invalid_request", detail)
    code = _CODE_OF_STATUS.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "unavailable")
    detail = str(exc.detail)
    path = request.url.path[:200]
    if exc.status_code == 404:
        detail = f"no such resource: {request.method} {path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {path}"
    return problem_response(exc.status_code, code, detail, exc.headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _body_fault(error: dict[str, Any], request: Request, doc: object) -> str | None:
    """A body that is not a JSON object at all, said so a client knows what to change (pydantic
    would say "JSON decode error" or "a valid dictionary or object to extract fields from")."""
    loc = tuple(error.get("loc", ()))
    if loc[:1] != ("body",):
        return None
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        if len(loc) == 2 and isinstance(loc[1], int) and isinstance(doc, str):
            line = doc.count("\n", 0, loc[1]) + 1
            column = loc[1] - doc.rfind("\n", 0, loc[1])
            reason = f"{reason} at line {line}, column {column}"
        return f"not valid JSON ({reason})"
    if len(loc) > 1:
        return None
    if isinstance(error.get("input"), bytes):  # FastAPI parses JSON only when the type says JSON
        content_type = request.headers.get("content-type")
        sent = f"not {content_type[:80]!r}" if content_type else "none was sent"
        return f"must be JSON sent with Content-Type: application/json ({sent})"
    if error.get("type") == "missing":
        return "required: a JSON object"
    if error.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "must be a JSON object"
    return None


def _reported(error: dict[str, Any], request: Request, doc: object) -> dict[str, str]:
    """One validation error as the problem's ``errors`` lists it: ``{"loc", "msg"}``."""
    fault = _body_fault(error, request, doc)
    if fault is not None:
        return {"loc": "body", "msg": fault}
    return {
        "loc": _location(error.get("loc", ())),
        "msg": str(error.get("msg", "")).removeprefix("Value error, "),  # pydantic's prefix says nothing
    }


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_reported(e, request, exc.body) for e in exc.errors()]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]) or "the request is not valid"
    return problem_response(422, "invalid_request", detail, extra={"errors": errors[:20]})


async def _unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TransientError)
    return unavailable_answer(exc, request.url.path)


def unavailable_answer(exc: TransientError, path: str) -> Response:
    """503 with ``Retry-After`` for a store or gate that cannot be reached (logged)."""
    log.warning("unavailable", extra={"path": path, "error": str(exc)})
    detail = "the service cannot reach its data store now; retry later"
    return problem_response(503, "unavailable", detail, {"Retry-After": str(exc.retry_after)})


_DOMAIN_ERRORS: Final[dict[type[Exception], str]] = {
    DealNotFound: "not_found",
    NotYourDeal: "forbidden",
    BadCursor: "invalid_request",
    DeviceNotFound: "not_found",
    NotYourDevice: "forbidden",
    DeviceIdTaken: "conflict",
    DeviceKeyTaken: "conflict",
    DeviceKeyRefused: "invalid_request",
    DeviceUnauthorized: "unauthorized",
    VoucherNotFound: "not_found",
    NotYourVoucher: "forbidden",
    BadWatermark: "invalid_request",
    MerchantNotFound: "not_found",
}
"""Errors of the use cases (``deals.py``, the stores) and the problem code each one answers."""


async def _domain_error(request: Request, exc: Exception) -> Response:
    code = _DOMAIN_ERRORS[type(exc)]
    challenge = {"WWW-Authenticate": "Bearer"} if code == "unauthorized" else None
    return problem_response(CODES[code], code, str(exc), challenge)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_answer(request.url.path)


def unexpected_answer(path: str) -> Response:
    """500 for an exception nothing foresaw, logged with its traceback (call it in ``except``)."""
    log.exception("unexpected error", extra={"path": path})
    return problem_response(500, "internal_error", "an unexpected error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TransientError, _unavailable)
    for error in _DOMAIN_ERRORS:
        app.add_exception_handler(error, _domain_error)
    app.add_exception_handler(Exception, _unexpected)
