"""Pure ASGI middlewares: bounds on request bodies, and ``HEAD`` answered like ``GET``.

``BodyLimits`` refuses a body over the size limit from its ``Content-Length`` header, or, for
a chunked body, as soon as the bytes read pass it, so an unbounded body is never read. It
also bounds the time to read a body: uvicorn has no such timeout, and a client that sends
``Content-Length: 100`` and then two bytes would otherwise hold a connection (and the
request's task) forever. Past the deadline the answer is 408 ``request_timeout`` with
``Connection: close``, and uvicorn closes the connection.

``HeadAsGet``: FastAPI routes answer only the methods they declare, so ``HEAD`` on a ``GET``
route would be 405; RFC 9110 wants it answered like ``GET`` without the body.
"""

from __future__ import annotations

import asyncio

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Problem, problem_response


class BodyLimits:
    """413 ``payload_too_large`` over ``max_bytes`` (or the limit ``larger`` gives a path); 408
    ``request_timeout`` when the whole body has not arrived ``timeout`` seconds after the request
    started."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout: float, larger: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.larger = larger or {}

    @staticmethod
    def _too_large(limit: int) -> Problem:
        return Problem("payload_too_large", f"the request body is larger than {limit} bytes")

    def _too_slow(self) -> Problem:
        detail = f"the request body did not arrive within {self.timeout:g} seconds"
        return Problem("request_timeout", detail, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = max(self.max_bytes, self.larger.get(scope["path"], 0))
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    problem = (
                        self._too_large(limit)
                        if value.isdigit()
                        else Problem("invalid_request", "bad length")
                    )
                    response = problem_response(problem.status_code, problem.code, str(problem.detail))
                    await response(scope, receive, send)
                    return
                break
        deadline = asyncio.get_running_loop().time() + self.timeout
        seen = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal seen, complete
            if complete:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise self._too_large(limit)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class HeadAsGet:
    """Runs ``HEAD`` on a path that has a ``GET`` route as that ``GET``, and drops the body it
    sends (headers, ``Content-Length`` included, stay). Other ``HEAD`` requests pass unchanged
    (404, or 405 where only other methods exist)."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET"}
        if not any(route.matches(as_get)[0] is Match.FULL for route in self.router.routes):
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(as_get, receive, send_headers_only)
