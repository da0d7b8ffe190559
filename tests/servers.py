"""Servers a test runs for itself, on loopback, on a free port, stopped when it ends.

Importable from every suite (``tests/`` is on pytest's ``pythonpath``); the fixtures that
start them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from shopcardd_bench.services import RabbitNode
from shopcardd_bench.services import free_port as free_port  # the tests take it from here

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` for a child a test sends SIGINT: SIGINT back to its default, so Python in
    the child raises KeyboardInterrupt even where the suite inherited SIGINT ignored (a shell's
    background job, ``nohup``), as a terminal's Ctrl-C would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def yields_to_the_suite() -> None:
    """``preexec_fn`` for a child that runs as fast as the machine lets it for a set time (the
    rehearsal's sale): at a lower priority it takes the CPU the other tests leave, instead of
    a share that stretches them, on a 2-core machine, past the suite's ten minutes. What it
    checks does not depend on its rate."""
    os.nice(10)


def service_missing(reason: str) -> None:
    """Skip on a laptop without the service; fail in CI, where it must be there. (Here rather than
    in conftest.py: a test module's ``from conftest import`` finds whichever conftest.py of a
    folder without ``__init__.py`` pytest imported last.)"""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the CI machine must provide it)", pytrace=False)
    pytest.skip(reason)


class SpareRedis:
    """A redis-server of a test's own on a free loopback port, with an append-only file fsynced
    at every write, so the test can freeze, kill and restart it without touching the machine's
    Redis and find every acknowledged write again after a restart."""

    def __init__(self, exe: str, port: int, data: Path) -> None:
        self.exe, self.port, self.data = exe, port, data
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start (or restart, on the same port and data) and wait until it answers PING."""
        import redis

        self.data.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", *extra]
        with (self.data / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen([self.exe, *args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        with redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=0.2) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"redis-server did not start; see {self.data / 'redis.log'}")
                    time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """SIGSTOP freezes it (a hung server), SIGCONT thaws it."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """A clean shutdown, as an operator's restart would do."""
        self._end(graceful=True)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything more."""
        self._end(graceful=False)

    def _end(self, *, graceful: bool) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.terminate() if graceful else self.proc.kill()
            self.proc.wait(timeout=10)


class DroppingProxy:
    """A TCP proxy on a free loopback port to ``upstream`` (host, port) that cuts the connection
    at every ``every``-th request: alternately before the request reaches the server (it never
    happened) and after the server answered (it happened, but the client never hears of it).
    Requests are counted at the start of each chunk the client sends: a client that sends one
    request at a time and waits for its answer, as the device's sync does."""

    def __init__(self, upstream: tuple[str, int], every: int) -> None:
        self.upstream, self.every = upstream, every
        self.requests = self.drops = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server on this thread, answers back on another; cut both ends to drop."""
        cut = threading.Event()

        def answers() -> None:
            while data := _recv(server):
                if cut.is_set():
                    break
                client.sendall(data)
            _shut(client, server)

        threading.Thread(target=answers, daemon=True).start()
        while data := _recv(client):
            if data.startswith((b"POST ", b"GET ")):
                with self._lock:
                    self.requests += 1
                    drop = self.requests % self.every == 0
                    self.drops += drop
                    before = drop and self.drops % 2 == 1
                if before:
                    break
                if drop:
                    cut.set()  # the server does the work; its answer is swallowed
            server.sendall(data)
        if not cut.is_set():
            _shut(client, server)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _shut(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class BodyLimitProxy:
    """An HTTP proxy on a free loopback port in front of ``upstream`` (a URL) that refuses a POST
    whose body is over ``max_bytes`` with 413 and an HTML page, as nginx's ``client_max_body_size``
    does, and passes every other one on. ``passed`` and ``refused`` hold the sizes of the bodies."""

    PAGE: ClassVar[bytes] = b"<html><head><title>413 Request Entity Too Large</title></head></html>\r\n"

    def __init__(self, upstream: str, max_bytes: int) -> None:
        self.upstream, self.max_bytes = upstream.rstrip("/"), max_bytes
        self.passed: list[int] = []
        self.refused: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body in two writes: no delayed-ACK wait

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads ``passed`` and ``refused``."""

            def do_POST(self) -> None:
                import requests

                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if len(body) > proxy.max_bytes:
                    proxy.refused.append(len(body))
                    self._answer(413, "text/html", proxy.PAGE)
                    return
                proxy.passed.append(len(body))
                passed_on = ("Authorization", "Content-Type", "Host")  # Host: the token's audience
                headers = {k: v for k, v in self.headers.items() if k in passed_on}
                answer = requests.post(proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                self._answer(answer.status_code, answer.headers.get("Content-Type", ""), answer.content)

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BodyLimitProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpareRabbitMQ(RabbitNode):
    """A rabbitmq-server of a test's own (the bench's ``RabbitNode``): its own node name, ports,
    database and logs under the test's folder, so a test can stop and start it under load without
    touching the machine's broker (which other suites use)."""

    def __init__(self, exe: str, folder: Path) -> None:
        super().__init__(exe, folder)

    def start(self) -> None:
        """Start (or restart) and wait until it takes an AMQP connection."""
        try:
            super().start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
