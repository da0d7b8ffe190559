"""Issue 17's acceptance: three counters on hosts of their own share redemptions over the shop LAN.

Each counter is ``shopcardd-device run`` (a keyboard scanner on stdin) in a network namespace of
its own, wired to a bridge in a fourth namespace (the shop's switch) by a veth pair; they find
each other by multicast, with nothing pinned and no backend anywhere. A voucher redeemed at A is
refused at B and C; with C's cable pulled, A and B go on redeeming; when C's cable is back, C learns
what it missed and refuses those vouchers. Outcomes are polled up to a deadline, never slept for.

Making namespaces needs root and ``ip``: elsewhere the test skips saying why, except under
``CI=true``, where it fails. Everything it makes is removed afterwards.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from shopcardd_bench.lan import make_shop
from shopcardd_voucher import KeySet

from .conftest import BIN, MERCHANT, Keys, Mint, device_command, mock_gpio_env

pytestmark = pytest.mark.slow

DEADLINE_SECONDS = 60.0
COUNTERS = {"till-a": "10.77.0.1", "till-b": "10.77.0.2", "till-c": "10.77.0.3"}


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"network namespaces are needed under CI=true: {reason}")
    pytest.skip(f"cannot make network namespaces here: {reason}")


@pytest.fixture
def shop_network() -> Iterator[dict[str, str]]:
    """Namespaces ``<tag>-till-x`` on a bridge in ``<tag>-switch``; yields device -> namespace."""
    if shutil.which("ip") is None:
        _cannot("no ip(8) (iproute2)")
    if os.geteuid() != 0:
        _cannot("not root")
    tag = f"scd{os.getpid() % 100_000}"
    switch = f"{tag}-switch"
    made = [switch]
    names = {device: f"{tag}-{device}" for device in COUNTERS}
    try:
        if (done := _ip("netns", "add", switch)).returncode:
            made.clear()
            _cannot(done.stderr.strip())
        steps = [
            ("-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"),
            ("-n", switch, "link", "set", "br0", "up"),
        ]
        for number, (device, address) in enumerate(COUNTERS.items()):
            name = names[device]
            _ip("netns", "add", name)
            made.append(name)
            port = f"port{number}"
            steps += [
                ("link", "add", port, "netns", switch, "type", "veth", "peer", "name", "eth0", "netns", name),
                ("-n", switch, "link", "set", port, "master", "br0", "up"),
                ("-n", name, "link", "set", "lo", "up"),
                ("-n", name, "addr", "add", f"{address}/24", "dev", "eth0"),
                ("-n", name, "link", "set", "eth0", "up"),
                ("-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0"),  # the LAN's multicast
            ]
        for step in steps:
            if (done := _ip(*step)).returncode:
                _cannot(f"ip {' '.join(step)}: {done.stderr.strip()}")
        yield names
    finally:
        for name in made:
            _ip("netns", "del", name)


def cable(switch_port: int, tag: str, up: bool) -> None:
    """Plug (up) or pull (down) a counter's cable at the switch."""
    done = _ip("-n", f"{tag}-switch", "link", "set", f"port{switch_port}", "up" if up else "down")
    assert done.returncode == 0, done.stderr


class Till:
    """``shopcardd-device run`` in its namespace; ``scan`` types a code and returns the verdict."""

    def __init__(self, namespace: str, config: Path, log: Path) -> None:
        self.config = config
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, str(BIN / "shopcardd-device"), "run", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=mock_gpio_env(),
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)

    def scan(self, token: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(token + "\n")
        self.proc.stdin.flush()
        return self._lines.get(timeout=DEADLINE_SECONDS).split()[0]

    def would_say(self, token: str) -> str:
        """The verdict this counter's ledger gives now, recording nothing (``verify --dry-run``)."""
        done = device_command("verify", "--config", self.config, "--json", "--dry-run", token)
        return str(json.loads(done.stdout)["result"])

    def lan(self) -> dict[str, object]:
        return json.loads(device_command("status", "--config", self.config, "--json").stdout)["lan"]

    def stop(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        code = self.proc.wait(timeout=DEADLINE_SECONDS)
        self._log.close()
        return code


def wait_for(what: str, check: object) -> float:
    """Poll ``check`` until true; the seconds it took (printed, never asserted)."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > DEADLINE_SECONDS:
            pytest.fail(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.05)
    took = time.monotonic() - start
    print(f"{what}: {took:.2f} s")
    return took


def test_three_counters_share_redemptions_and_a_counter_cut_off_catches_up(
    shop_network: dict[str, str], tmp_path: Path, keys: Keys, mint: Mint
) -> None:
    paths = make_shop(
        tmp_path,
        list(COUNTERS),
        voucher_keys=KeySet.load(keys.jwks),
        merchant=MERCHANT,
        lan={device: "hello_seconds = 0.5" for device in COUNTERS},  # discovery by multicast, nothing pinned
        extra='backend_url = "https://10.77.0.99:9"  # no backend anywhere\n[camera]\nsource = "keyboard"\n'
        "[gpio]\nsignal_seconds = 0.01\n",
    )
    tag = next(iter(shop_network.values())).split("-")[0]
    tills = {d: Till(shop_network[d], paths[d], tmp_path / f"{d}.log") for d in COUNTERS}
    a, b, c = tills.values()
    try:
        wait_for(
            "each counter heard the two others",
            lambda: all(t.lan()["peers_seen"] == 2 for t in tills.values()),
        )

        first = mint()
        assert a.scan(first) == "accepted"
        wait_for(
            "B and C refuse A's voucher",
            lambda: b.would_say(first) == c.would_say(first) == "already_redeemed",
        )
        assert b.scan(first) == "already_redeemed"
        assert c.scan(first) == "already_redeemed"

        cable(2, tag, up=False)  # C cut off
        at_a, at_b = mint(), mint()
        assert a.scan(at_a) == "accepted"
        assert b.scan(at_b) == "accepted"
        wait_for(
            "A and B learn each other's", lambda: b.would_say(at_a) == a.would_say(at_b) == "already_redeemed"
        )
        assert c.would_say(at_a) == c.would_say(at_b) == "accepted"  # C cannot know: the cut is real

        cable(2, tag, up=True)  # C rejoins
        wait_for(
            "C learns what it missed",
            lambda: c.would_say(at_a) == c.would_say(at_b) == "already_redeemed",
        )
        assert c.scan(at_a) == "already_redeemed"
        assert c.scan(at_b) == "already_redeemed"
        assert c.lan()["received"] == 3
    finally:
        codes = [till.stop() for till in tills.values()]
    assert codes == [0, 0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
