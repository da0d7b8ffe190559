"""The verifier's watchdog over a real unix datagram socket, as systemd's NOTIFY_SOCKET is.

systemd restarts a Type=notify service with WatchdogSec= when WATCHDOG=1 stops arriving: the
scan loop must say READY=1 once it scans, keep feeding while it turns, and stop feeding when it
is stuck (so that it is restarted), and say nothing at all outside systemd.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.frames.base import Frame
from shopcardd_device.scanner import Scanner
from shopcardd_device.watchdog import Watchdog
from shopcardd_provision.qr import save_qr

from .conftest import BIN, Bundle, make_bundle

INTERVAL_USEC = 200_000  # a short WatchdogSec=, so a stuck loop is seen quickly


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: a bound unix datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    yield sock
    sock.close()


def received(sock: socket.socket, timeout: float = 0.0) -> list[str]:
    """Every datagram waiting now, or the first to come within ``timeout`` seconds."""
    messages: list[str] = []
    sock.settimeout(timeout)  # 0: non-blocking
    try:
        while True:
            messages.append(sock.recv(4096).decode())
            sock.settimeout(0)
    except (BlockingIOError, TimeoutError):
        return messages


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path)


def counter_config(bundle: Bundle, tmp_path: Path, camera: str) -> Path:
    config = tmp_path / "device.toml"
    text = (bundle.folder / "device.toml").read_text()
    text = text.replace("/var/lib/shopcardd", str(tmp_path / "data"))
    text = text.replace("/etc/shopcardd/", f"{bundle.folder}/")
    config.write_text(f"{text}\n[gpio]\nsignal_seconds = 0.01\n{camera}\n")
    return config


def camera_config(bundle: Bundle, tmp_path: Path) -> Path:
    """A counter whose camera sees two frames of a voucher (image files), then ends."""
    frames = tmp_path / "frames"
    save_qr(bundle.voucher(), frames / "01.png")
    save_qr(bundle.voucher(), frames / "02.png")
    return counter_config(bundle, tmp_path, f'[camera]\nsource = "files"\npath = "{frames}"')


def run_device(config: Path, sock: socket.socket | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "WATCHDOG_USEC": str(INTERVAL_USEC)}
    env.pop("NOTIFY_SOCKET", None)
    if sock is not None:
        env["NOTIFY_SOCKET"] = sock.getsockname()
    return subprocess.run(
        [str(BIN / "shopcardd-device"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_run_says_ready_then_feeds_the_watchdog_from_the_scan_loop(
    bundle: Bundle, tmp_path: Path, notify_socket: socket.socket
) -> None:
    done = run_device(camera_config(bundle, tmp_path), notify_socket)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "accepted"
    messages = received(notify_socket)
    assert messages[0] == "READY=1\nSTATUS=scanning"
    assert "WATCHDOG=1" in messages[1:]
    assert messages[-1] == "STOPPING=1"


def test_a_keyboard_scanner_waits_on_a_person_so_the_watchdog_is_turned_off(
    bundle: Bundle, tmp_path: Path, notify_socket: socket.socket
) -> None:
    """A quiet shop is not a stuck loop: a keyboard scanner's read blocks until someone scans."""
    lines = tmp_path / "typed.txt"
    lines.write_text(bundle.voucher() + "\n")
    config = counter_config(bundle, tmp_path, f'[camera]\nsource = "keyboard"\npath = "{lines}"')
    done = run_device(config, notify_socket)
    assert done.returncode == 0, done.stderr
    messages = received(notify_socket)
    assert messages[:2] == ["WATCHDOG_USEC=0", "READY=1\nSTATUS=scanning"]
    assert "WATCHDOG=1" not in messages
    assert "watchdog_off" in [json.loads(line)["message"] for line in done.stderr.splitlines()]


def test_outside_systemd_run_sends_nothing(
    bundle: Bundle, tmp_path: Path, notify_socket: socket.socket
) -> None:
    done = run_device(camera_config(bundle, tmp_path), None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "accepted"
    assert received(notify_socket) == []


class StuckSource:
    """A camera whose second read hangs (a wedged driver) until the test lets it go."""

    name = "stuck-camera"

    def __init__(self) -> None:
        self.reads = 0
        self.hanging, self.release = threading.Event(), threading.Event()

    def read(self) -> Frame | None:
        self.reads += 1
        if self.reads == 2:
            self.hanging.set()
            self.release.wait(60)
        return Frame(text=None) if self.reads < 3 else None


def test_a_stuck_loop_stops_feeding_and_feeds_again_once_it_turns(
    bundle: Bundle, tmp_path: Path, notify_socket: socket.socket
) -> None:
    config = DeviceConfig.load(counter_config(bundle, tmp_path, ""))
    source = StuckSource()
    with Counter.open(config) as counter, Watchdog(notify_socket.getsockname(), INTERVAL_USEC) as watchdog:
        scanner = Scanner(source, None, counter, heartbeat=watchdog.feed)  # type: ignore[arg-type]
        loop = threading.Thread(target=scanner.run)
        loop.start()
        assert source.hanging.wait(30)
        assert set(received(notify_socket)) == {"WATCHDOG=1"}  # fed before the read that hangs
        # five watchdog intervals: systemd would have restarted it long ago
        assert received(notify_socket, timeout=5 * INTERVAL_USEC / 1e6) == []
        source.release.set()
        loop.join(30)
    assert received(notify_socket) == ["WATCHDOG=1"]  # the loop turned again


def test_a_watchdog_meant_for_another_process_is_not_fed() -> None:
    """systemd sets WATCHDOG_PID; a child of the service that inherits the variables must not feed."""
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert not Watchdog.from_environment(env).is_feeding
    assert Watchdog.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).is_feeding
