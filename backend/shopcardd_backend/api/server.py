"""uvicorn's HTTP protocol with one write per response instead of two.

uvicorn writes a response's status line and headers when the app sends
``http.response.start``, and its body when the app sends ``http.response.body``: two
``transport.write`` calls, so two ``send()`` system calls, each of which on loopback (and to
nginx) also runs the receiving side's TCP work. Under the claims bench py-spy put about a fifth
of the API process's CPU in those calls. ``OneWriteHttpToolsProtocol`` holds what is written
during one turn of the event loop and writes it at the end of that turn in one call: a
response sent in one go (every claim, every problem document) leaves in one ``send()``, in the
same order as before. ``serve`` runs uvicorn with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWritePerTurn:
    """A transport whose writes of one event-loop turn go out as one write at its end."""

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held = []
            if not self.transport.is_closing():
                self.transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self._held))

    def close(self) -> None:
        """Close after what was written (as a transport's ``close`` does)."""
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = []
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through ``_OneWritePerTurn``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _OneWritePerTurn(transport, self.loop)  # type: ignore[assignment]
