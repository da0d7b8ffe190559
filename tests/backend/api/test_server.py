"""``serve``'s HTTP protocol writes each response with one ``send()``: uvicorn writes the head
and the body apart, two system calls that cost a fifth of the API's CPU under the claims bench."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from shopcardd_backend.api.server import OneWriteHttpToolsProtocol

BODY = b'{"voucher_id":"v1"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


class Transport(asyncio.Transport):
    """What the protocol writes, call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def served(requests: bytes) -> Transport:
    config = uvicorn.Config(app, log_config=None, access_log=False, http=OneWriteHttpToolsProtocol)
    config.load()
    protocol = OneWriteHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(requests)
    for _ in range(50):  # the app's tasks and the end-of-turn writes run on the loop
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def test_each_response_leaves_in_one_write_head_and_body_together() -> None:
    request = b"POST /v1/deals/d1/claims HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n"
    transport = asyncio.run(served(request * 2))  # two requests pipelined on one connection
    assert len(transport.writes) == 2, transport.writes
    for written in transport.writes:
        assert written.startswith(b"HTTP/1.1 201 Created\r\n") and written.endswith(b"\r\n\r\n" + BODY)


def test_a_connection_closed_after_its_answer_gets_the_answer_first() -> None:
    request = b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    transport = asyncio.run(served(request))
    assert len(transport.writes) == 1 and transport.writes[0].endswith(BODY) and transport.closed
