"""A client that announces a body and never sends it must not hold a connection forever."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from shopcardd_bench.served import running_backend


def test_a_half_sent_body_gets_408_and_the_connection_closed(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "SHOPCARDD_BODY_TIMEOUT_SECONDS": "0.5"}
    with running_backend(env, tmp_path / "serve.log") as backend:
        url = urlsplit(backend.url)
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            head = b"POST /v1/deals HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b"Content-Length: 100\r\n\r\n{" + b'"')
            answer = b""
            # Read until the server closes; a server that waits forever makes recv time out (30 s).
            while chunk := sock.recv(4096):
                answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in rest.lower()
    assert b'"code": "request_timeout"' in rest
