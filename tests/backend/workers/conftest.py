"""The notify worker's far ends, run by the test on loopback: a mail server (aiosmtpd) and an
SMS provider (http.server in a thread). Each keeps what it was sent and answers as the test
tells it, per recipient: a refusal, a "try later", or (stopped) no answer at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from servers import free_port


class MailServer:
    """An SMTP server that delivers into ``inbox``; ``replies[address]`` answers RCPT TO instead."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.inbox: list[EmailMessage] = []
        self.replies: dict[str, str] = {}
        self.tried: list[str] = []
        """Every recipient asked for, delivered or not."""
        self._controller: Controller | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.tried.append(address)
        if address in self.replies:
            return self.replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.inbox.append(message_from_bytes(content, policy=policy.default))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for message in self.inbox if message["To"] == address]

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class SmsProvider:
    """An SMS API that records each POST; ``statuses[number]`` answers instead of 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/messages"
        self.sent: list[dict[str, Any]] = []
        """Every request: ``{"auth": Authorization header, "json": body}``."""
        self.statuses: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    def texts_to(self, number: str) -> list[str]:
        return [r["json"]["text"] for r in self.sent if r["json"].get("to") == number and r["status"] == 200]

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = provider.statuses.get(body.get("to"), 200)
                provider.sent.append(
                    {"auth": self.headers.get("Authorization"), "json": body, "status": status}
                )
                answer = json.dumps({"status": "queued" if status == 200 else "error"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    server = MailServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sms_provider() -> Iterator[SmsProvider]:
    provider = SmsProvider()
    provider.start()
    yield provider
    provider.stop()
