"""Demo chapter 5: the shop LAN. Two tills of one shop tell each other of each redemption, so the
second refuses a voucher the first redeemed, with no backend running at all.

Uses chapter 4's two enrolled tills (their device keys, and each other as peers: their last sync
brought them) and one of chapter 3's unused vouchers; the backend is stopped first. Both tills run
the scan loop on this one machine, a keyboard scanner each (the demo types the codes), so they
listen on two ports of loopback and pin each other's address (``[lan] peers``); in a shop each
has its own host and they find each other by multicast, with nothing to set.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from demo import Demo, DemoFailed

TILLS = ("till-1", "till-2")
DEADLINE_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tables(port: int, other: int) -> str:
    return f"""
[camera]
source = "keyboard"                # a USB scanner typing codes (here the demo types them)

[gpio]
signal_seconds = 0.2

[lan]                              # the shop LAN: on by default once a sync brought peers
port = {port}
discovery = false                  # two tills on one machine: pinned, not multicast
peers = ["127.0.0.1:{other}"]
hello_seconds = 0.5
"""


def _wait(what: str, check: Any) -> float:
    """Poll ``check`` until true (the demo fails after the deadline); the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE_SECONDS:
            raise DemoFailed(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def _quiet(demo: Demo, *args: str) -> str:
    """Run a command the demo polls with, unprinted (the demo shows the one that answers)."""
    argv = [shutil.which(args[0], path=str(Path(sys.executable).parent)) or args[0], *args[1:]]
    return subprocess.run(argv, capture_output=True, text=True, env=demo.env, cwd=demo.out, timeout=60).stdout


class _Till:
    """One till's scan loop, started in the background; ``scan`` types a code into it."""

    def __init__(self, demo: Demo, name: str) -> None:
        self.demo, self.name = demo, name
        self.log = demo.out / f"{name}-run.log"
        self.proc = demo.spawn(
            "shopcardd-device", "run", "--config", f"{name}/device.toml", log=self.log, stdin=True
        )

    def _verdicts(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if line and not line.startswith("{")]

    def scan(self, token: str) -> str:
        before = len(self._verdicts())
        self.demo.say(f"(the scanner at {self.name} types the voucher's code)")
        assert self.proc.stdin is not None
        self.proc.stdin.write(token.encode() + b"\n")
        self.proc.stdin.flush()
        _wait(f"{self.name} answers", lambda: len(self._verdicts()) > before)
        line = self._verdicts()[before]
        self.demo.say(f"  {self.name}: {line}")
        return line.split()[0]

    def lan(self) -> dict[str, Any]:
        out = _quiet(
            self.demo, "shopcardd-device", "status", "--config", f"{self.name}/device.toml", "--json"
        )
        return dict(json.loads(out)["lan"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the scanner is unplugged: the loop ends
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise DemoFailed(f"{self.name}'s scan loop did not end") from None
            if code != 0:
                raise DemoFailed(f"{self.name}'s scan loop exited {code}; see {self.log}")


def run(demo: Demo) -> None:
    demo.chapter("5. The shop LAN: the second till refuses what the first redeemed, no backend at all")
    demo.say("The shop is offline again, and this time the backend is gone too.")
    demo.end_now()
    voucher: dict[str, Any] = demo.facts["unused_vouchers"][2]  # type: ignore[index]
    ports = {till: _free_port() for till in TILLS}
    for till, other in zip(TILLS, reversed(TILLS), strict=True):
        config = demo.out / till / "device.toml"
        config.write_text(config.read_text() + _tables(ports[till], ports[other]))
    demo.say("\nEach till's sync (chapter 4) left it the other's public key. Added to till-1/device.toml:")
    for line in _tables(ports["till-1"], ports["till-2"]).strip().splitlines():
        demo.say("  " + line)
    demo.say("(till-2's is the same with the two ports swapped.) Both tills start scanning:")
    tills = [_Till(demo, till) for till in TILLS]

    def stop_all() -> None:
        for till in tills:
            till.stop()

    demo.at_end(stop_all)  # also when a step below fails
    first, second = tills
    _wait("the tills hear each other", lambda: all(t.lan()["peers_seen"] == 1 for t in tills))
    demo.ok("each till heard the other's signed hello")

    demo.say(f"\nA customer shows voucher {voucher['voucher_id']} at till-1:")
    if (verdict := first.scan(voucher["token"])) != "accepted":
        raise DemoFailed(f"till-1 should accept a fresh voucher, not {verdict}")
    demo.ok("till-1 accepted it, committed it, showed green, then told till-2 (signed with its device key)")
    took = _wait(
        "till-2 learns of it",
        lambda: '"already_redeemed"' in _quiet(
            demo, "shopcardd-device", "verify", "--config", "till-2/device.toml", "--json", "--dry-run",
            voucher["token"],
        ),
    )  # fmt: skip
    demo.say(f"  (till-2's ledger had it {took:.1f} s later, polled; shopcardd-bench lan measures the delay)")
    demo.say("\nA friend shows a screenshot of the same code at till-2:")
    if (verdict := second.scan(voucher["token"])) != "already_redeemed":
        raise DemoFailed(f"till-2 should refuse the voucher till-1 redeemed, not {verdict}")
    demo.refused("till-2, the same voucher a moment later -> already_redeemed")
    demo.say("Where and when, as till-2's ledger has it:")
    demo.run(
        "shopcardd-device",
        "verify",
        "--config",
        "till-2/device.toml",
        "--dry-run",
        voucher["token"],
        expect=1,
    )
    demo.say("\nWhat till-2's status says of the LAN (it also got till-1's redemption of chapter 4):")
    status = demo.run("shopcardd-device", "status", "--config", "till-2/device.toml", show=False).stdout
    for line in status.splitlines():
        if "shop LAN" in line or line.startswith("    till-"):
            demo.say("  " + line)
    stop_all()
    demo.ok("both tills stopped (scanner unplugged: exit 0); no backend was running at any time")
