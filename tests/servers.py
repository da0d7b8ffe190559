"""Servers a test runs for itself, on loopback, on a free port, stopped when it ends.

Importable from every suite (``tests/`` is on pytest's ``pythonpath``); the fixtures that
start them live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on loopback that nobody listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
