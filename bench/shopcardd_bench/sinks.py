"""Where the notify worker's messages go in a rehearsal: a mail server (aiosmtpd) and an SMS
provider (a small HTTP server), both on loopback, each counting the messages per voucher."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOUCHER_IN_EMAIL = re.compile(r"^Voucher: (\S+)$", re.MULTILINE)
VOUCHER_IN_SMS = re.compile(r"your voucher (\S+) for ")


class Notices:
    """Messages received per voucher id, and the ones no voucher id could be read from."""

    def __init__(self) -> None:
        self.per_voucher: Counter[str] = Counter()
        self.unreadable = 0
        self.unread: list[str] = []
        """The first few messages no voucher id was read from, for the report."""
        self.cut_off = 0
        """Requests whose sender went away before its body came: no message (it sends again)."""
        self._lock = threading.Lock()

    def add(self, pattern: re.Pattern[str], text: str) -> None:
        found = pattern.search(text)
        with self._lock:
            if found is None:
                self.unreadable += 1
                if len(self.unread) < 3:
                    self.unread.append(text[:300])
            else:
                self.per_voucher[found.group(1)] += 1

    def add_cut_off(self) -> None:
        with self._lock:
            self.cut_off += 1

    @property
    def total(self) -> int:
        return sum(self.per_voucher.values()) + self.unreadable


class MailSink:
    """An SMTP server on a free loopback port (``url`` for ``SHOPCARDD_SMTP_URL``)."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.notices = Notices()
        notices = self.notices

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                text = envelope.content.decode("utf-8", "replace").replace("=\r\n", "")
                notices.add(VOUCHER_IN_EMAIL, text.replace("\r\n", "\n"))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.url = f"smtp://127.0.0.1:{port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


class SmsSink:
    """An SMS provider's send endpoint on a free loopback port (``url`` for ``SHOPCARDD_SMS_URL``)."""

    def __init__(self) -> None:
        self.notices = Notices()
        notices = self.notices

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out as two writes (head, body): with Nagle's algorithm on, the body
            # waits for the client's delayed ACK of the head, 40 ms per message on loopback.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the rehearsal reads the counts."""

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # A provider takes no message from a request that never arrived whole, and
                    # its sender, having got no answer, sends it again.
                    notices.add_cut_off()
                    self.close_connection = True
                    return
                try:
                    notices.add(VOUCHER_IN_SMS, str(json.loads(body).get("text", "")))
                except ValueError:
                    notices.add(VOUCHER_IN_SMS, "")
                answer = b'{"status": "queued"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/send"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
