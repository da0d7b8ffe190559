"""A shop of counters in a rehearsal: each enrolled through nginx over https with
``shopcardd-provision enroll --ca-file`` (the run's private CA, which the bundle keeps), scanning
with ``shopcardd-device run`` (a keyboard scanner fed on stdin, the shop LAN on with the other
counters' loopback ports pinned) and synced by ``shopcardd-device sync`` every ``sync_every``
seconds, as its systemd timer would.

A counter can be cut off the backend and the LAN: its scan loop (which gossips) is stopped, it
scans with ``shopcardd-device verify``, and its syncs go to a proxy address where nothing listens,
so each fails as a sync without a network does. Healing starts its scan loop again.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .services import free_port


def _command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass(frozen=True)
class SyncRun:
    at: float
    counter: str
    status: int
    cut: bool


@dataclass
class ShopCounter:
    name: str
    toml: Path
    env: dict[str, str]
    lan_port: int
    log: Path
    run: subprocess.Popen[bytes] | None = None
    cut: bool = False
    verified: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.run = subprocess.Popen(
                [_command("shopcardd-device"), "run", "--config", str(self.toml)],
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        """End the scan loop: no more input, so it stops after the codes it was given."""
        if self.run is not None:
            assert self.run.stdin is not None
            with contextlib.suppress(OSError):
                self.run.stdin.close()
            try:
                self.run.wait(30)
            except subprocess.TimeoutExpired:
                self.run.kill()
                self.run.wait()
            self.run = None

    def scan(self, token: str) -> None:
        with self.lock:
            if self.cut or self.run is None:
                self._verify(token)
                return
            stdin: IO[bytes] | None = self.run.stdin
            assert stdin is not None
            stdin.write(token.encode() + b"\n")
            stdin.flush()

    def _verify(self, token: str) -> None:
        done = subprocess.run(
            [_command("shopcardd-device"), "verify", "--json", "--config", str(self.toml), token],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in done.stdout.splitlines():
            with contextlib.suppress(ValueError):
                self.verified.append(json.loads(line))

    def sync(self) -> int:
        env = dict(self.env)
        if self.cut:  # no route to the backend: every request goes to a port nobody listens on
            env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
            env["HTTPS_PROXY"] = env["https_proxy"] = f"http://127.0.0.1:{free_port()}"
        with self.log.open("ab") as out:
            return subprocess.run(
                [_command("shopcardd-device"), "sync", "--config", str(self.toml)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            ).returncode

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            [_command("shopcardd-device"), "status", "--json", "--config", str(self.toml)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return dict(json.loads(done.stdout))


class Shop:
    """``size`` counters of ``merchant``, enrolled at ``url`` (nginx, https, trusting ``ca``)."""

    def __init__(
        self, folder: Path, url: str, ca: Path, api_key: str, merchant: str, logs: Path, size: int = 3
    ) -> None:
        self.folder, self.url, self.merchant = folder, url, merchant
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "GPIOZERO_"))}
        self.env = {**base, "GPIOZERO_PIN_FACTORY": "mock"}
        self.syncs: list[SyncRun] = []
        self.scans = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        ports = [free_port() for _ in range(size)]
        self.counters: list[ShopCounter] = []
        for n, port in enumerate(ports):
            name = f"till-{chr(ord('a') + n)}"
            bundle = folder / name
            enrol = subprocess.run(
                [
                    _command("shopcardd-provision"),
                    "enroll",
                    "--merchant",
                    merchant,
                    "--device",
                    name,
                    "--backend",
                    url,
                    "--out",
                    str(bundle),
                    "--data-dir",
                    "data",
                    "--ca-file",
                    str(ca),
                ],
                env={**self.env, "SHOPCARDD_API_KEY": api_key},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if enrol.returncode:
                raise RuntimeError(f"enrolling {name} through {url} failed: {enrol.stderr.strip()}")
            peers = ", ".join(f'"127.0.0.1:{other}"' for other in ports if other != port)
            toml = bundle / "device.toml"
            toml.write_text(
                toml.read_text()
                + '\n[camera]\nsource = "keyboard"\npath = "-"\n'
                + f"\n[lan]\nport = {port}\npeers = [{peers}]\ndiscovery = false\nhello_seconds = 2.0\n"
            )
            self.counters.append(ShopCounter(name, toml, self.env, port, logs / f"{name}.log"))

    def start(self, sync_every: float) -> None:
        for counter in self.counters:
            counter.sync()  # the first sync brings the other counters (the LAN's peers)
        for counter in self.counters:
            counter.start()
        for n, counter in enumerate(self.counters):
            offset = sync_every * n / len(self.counters)
            thread = threading.Thread(target=self._timer, args=(counter, sync_every, offset), daemon=True)
            thread.start()
            self._threads.append(thread)

    def serve(self, customer: Callable[[], str | None], every: float) -> None:
        """Scan a voucher that ``customer`` brings (None: nobody yet) every ``every`` seconds, at
        each counter in turn, on a thread of its own (a cut counter's ``verify`` takes a while)."""

        def scanning() -> None:
            turn = 0
            while not self._stop.wait(every):
                token = customer()
                if token is not None:
                    self.counters[turn % len(self.counters)].scan(token)
                    turn += 1
                    self.scans += 1

        thread = threading.Thread(target=scanning, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _timer(self, counter: ShopCounter, every: float, offset: float) -> None:
        if self._stop.wait(offset):
            return
        while not self._stop.is_set():
            self.sync(counter)
            if self._stop.wait(every):
                return

    def sync(self, counter: ShopCounter) -> int:
        cut = counter.cut
        status = counter.sync()
        self.syncs.append(SyncRun(time.time(), counter.name, status, cut))
        return status

    def cut(self, counter: ShopCounter) -> None:
        with counter.lock:
            counter.cut = True
        counter.stop()

    def heal(self, counter: ShopCounter) -> None:
        with counter.lock:
            counter.cut = False
            counter.start()

    def close(self) -> None:
        """Stop the timers and the scan loops, then sync every counter once more, as the timer
        would after the sale. Once only."""
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for counter in self.counters:
            counter.stop()
        for counter in self.counters:
            self.sync(counter)
