"""Power cuts: a counter killed at random moments never loses a scan it showed as accepted.

A child ``shopcardd-device verify --json -`` is fed a stream of genuine vouchers and killed
with SIGKILL at a random moment, many times over one ledger. The JSON stream is what the
cashier saw: every voucher it called accepted must be in the ledger exactly once, no
voucher may ever be accepted twice (even when fed again after a crash), and the ledger
must pass its integrity check.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from typing import IO

import pytest

from shopcardd_device.config import DeviceConfig
from shopcardd_device.ledger import Ledger

from .conftest import Keys, Mint, WriteConfig, start_device

ROUNDS = 40
PER_ROUND = 300
BUDGET_SECONDS = 45


def feed(stdin: IO[bytes], tokens: list[str]) -> None:
    """Write the stream but keep stdin open: the child must be killed, never see the end."""
    with contextlib.suppress(BrokenPipeError):
        stdin.write("".join(t + "\n" for t in tokens).encode())
        stdin.flush()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_accepted_scan(
    write_config: WriteConfig, mint: Mint, keys: Keys
) -> None:
    config_path = write_config()
    rng = random.Random(20261125)
    accepted: list[str] = []  # voucher ids, in the order the cashier was told "accepted"
    pending: list[str] = []  # tokens fed but not answered before the kill: fed again next round
    started = time.monotonic()
    rounds = kills = cut_short = 0
    while rounds < ROUNDS and time.monotonic() - started < BUDGET_SECONDS:
        rounds += 1
        tokens = pending + [mint() for _ in range(PER_ROUND)]
        proc = start_device(
            "verify", "--config", config_path, "--json", "-", stderr=subprocess.DEVNULL, text=False
        )
        assert proc.stdin and proc.stdout
        feeder = threading.Thread(target=feed, args=(proc.stdin, tokens))
        feeder.start()  # a thread, so neither pipe can fill up and block the other side
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0, 0.3))  # sometimes during start-up and the integrity check
            first = b""
        else:
            first = proc.stdout.readline()  # mostly in the middle of the stream of commits
            time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
        out = first + proc.stdout.read()
        feeder.join()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.stdout.close()
        answered = set()
        for line in out.decode().split("\n"):
            if not line.endswith("}"):
                continue  # a line cut short by the kill was never seen as a verdict
            answer = json.loads(line)
            answered.add(answer["input"])
            if answer["result"] == "accepted":
                accepted.append(str(answer["voucher_id"]))
            else:
                assert answer["result"] == "already_redeemed", answer  # only a re-fed voucher
        pending = [t for t in tokens if t not in answered]
        cut_short += bool(pending)

    assert cut_short >= rounds // 2, "most kills should land in the middle of the stream"
    assert len(accepted) == len(set(accepted)), "a voucher was accepted twice"
    config = DeviceConfig.load(config_path)
    with Ledger(config.ledger_path) as ledger:  # runs PRAGMA integrity_check
        in_ledger = [r.voucher_id for r in ledger.redemptions()]
    assert set(accepted) <= set(in_ledger), "a voucher shown as accepted is missing from the ledger"
    assert len(in_ledger) == len(set(in_ledger))
    db = sqlite3.connect(config.ledger_path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    print(f"{rounds} rounds, {kills} killed, {cut_short} cut short, {len(accepted)} accepted")
    assert len(accepted) > PER_ROUND  # the test exercised real work, not only start-ups
