"""The backend served on loopback for the benches and the tests: ``shopcardd-backend serve`` (or
another server command) on a free port until ``/readyz`` answers, the backend's one-shot
commands (``merchant create``, ``user-token``), and a redis-server of the bench's own.

A module of its own because the claims and sync benches and many tests start their backend this
way; the product never does.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .services import free_port


@dataclass
class Backend:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_backend(
    env: dict[str, str], log_path: Path, workers: int = 1, server: list[str] | None = None
) -> Iterator[Backend]:
    """``shopcardd-backend serve`` (or ``server``, a command taking ``--port``/``--workers``) on a
    free port, once ``/readyz`` answers; stopped (SIGTERM) after."""
    import httpx

    port = free_port()
    argv = [*(server or [_backend_exe(), "serve"]), "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Backend(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _backend_exe() -> str:
    """The ``shopcardd-backend`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("shopcardd-backend"))


def backend_command(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([_backend_exe(), *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"shopcardd-backend {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def own_redis(folder: Path) -> Iterator[str]:
    """A redis-server of the bench's own on a free port (no persistence): its CPU is the claims'
    alone, and the machine's shared Redis is left in peace."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; pass --redis-url")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait()
