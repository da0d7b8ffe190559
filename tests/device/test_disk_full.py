"""Fault drill: the counter's disk full, on a real filesystem the test fills (``small_disk``).

A scan that cannot be recorded is never accepted: the cashier sees the "could not record"
pattern, the operator reads why (a log line; ``verify`` exits 2 saying so). Once space returns
the counter records again, without a restart, and every voucher it called accepted while the
disk filled is in the ledger (refused as already used).
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from shopcardd_bench.synthetic import ScriptedSource
from shopcardd_device.cli import EXIT_NOT_RECORDED
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.feedback import FeedbackPanel
from shopcardd_device.scanner import Scan, Scanner
from shopcardd_voucher import Reason

from .conftest import Mint, WriteConfig, device_command, fill, start_device

ACCEPT, REJECT, BUZZER = 17, 27, 22


def redeemed(ledger: Path) -> set[str]:
    """The voucher ids the ledger holds, read as an operator would, apart from the counter."""
    with closing(sqlite3.connect(ledger)) as db:
        return {row[0] for row in db.execute("SELECT voucher_id FROM redemptions")}


def test_verify_on_a_full_disk_stops_at_the_first_code_it_cannot_record_and_recovers(
    small_disk: Path, write_config: WriteConfig, mint: Mint
) -> None:
    config, tokens = write_config(), [mint() for _ in range(30)]
    proc = start_device("verify", "--config", config, "--json", "-")
    assert proc.stdin and proc.stdout and proc.stderr
    answered: list[str] = []
    for token in tokens:
        proc.stdin.write(token + "\n")
        proc.stdin.flush()
        if not (line := proc.stdout.readline()):  # it stopped: this code could not be recorded
            break
        assert json.loads(line)["result"] == "accepted"
        answered.append(token)
        if len(answered) == 1:
            filler = fill(small_disk)  # the disk fills while verify runs
    assert proc.wait(30) == EXIT_NOT_RECORDED
    stopped = proc.stderr.read()
    assert "not recorded, so not accepted" in stopped and "the disk is full" in stopped, stopped
    assert 1 <= len(answered) < len(tokens)

    started_full = device_command("verify", "--config", config, "--json", tokens[-1])  # starts on it
    assert started_full.returncode == EXIT_NOT_RECORDED and started_full.stdout == ""
    assert "not recorded, so not accepted" in started_full.stderr

    filler.unlink()  # space returns
    again = device_command("verify", "--config", config, "--json", "-", stdin="\n".join(tokens))
    results = [json.loads(line)["result"] for line in again.stdout.splitlines()]
    # what was answered accepted as the disk filled is recorded (already used now); the rest redeem now
    assert results == ["already_redeemed"] * len(answered) + ["accepted"] * (len(tokens) - len(answered))


def lit(factory: MockFactory) -> dict[int, int]:
    """How often each LED and the buzzer came on since the last call."""
    counts = {pin: sum(bool(s.state) for s in factory.pin(pin).states) for pin in (ACCEPT, REJECT, BUZZER)}
    for pin in counts:
        factory.pin(pin).clear_states()
    return counts


GREEN = {ACCEPT: 1, REJECT: 0, BUZZER: 1}
COULD_NOT_RECORD = {ACCEPT: 2, REJECT: 2, BUZZER: 2}  # both lights flash twice, two beeps


def scan_once(counter: Counter, panel: FeedbackPanel, code: str) -> Scan | None:
    """One turn of the real scan loop on ``code``, its signal played out; ``None``: not recorded."""
    scans: list[Scan] = []
    scanner = Scanner(ScriptedSource([code]), None, counter, panel, on_scan=scans.append)
    scanner.run()
    assert panel.wait_for_idle(5)
    assert scanner.failures == (0 if scans else 1)
    return scans[0] if scans else None


def test_the_scan_loop_on_a_full_disk_shows_could_not_record_and_records_again_once_space_returns(
    small_disk: Path, config: DeviceConfig, mint: Mint, mock_factory: MockFactory
) -> None:
    tokens = [mint() for _ in range(30)]
    with Counter.open(config) as counter, FeedbackPanel(ACCEPT, REJECT, BUZZER, signal_seconds=0.01) as panel:
        filler = fill(small_disk)
        lit(mock_factory)
        recorded: dict[str, str] = {}  # token -> voucher id, for what was accepted as the disk filled
        for token in tokens:
            scan = scan_once(counter, panel, token)
            if scan is None:
                assert lit(mock_factory) == COULD_NOT_RECORD  # never green
                continue
            assert scan.verdict.reason is Reason.ACCEPTED and scan.verdict.voucher is not None
            assert lit(mock_factory) == GREEN
            recorded[token] = scan.verdict.voucher.voucher_id
        assert len(recorded) < len(tokens)
        assert redeemed(config.ledger_path) == set(recorded.values())  # every green is in the ledger

        filler.unlink()  # space returns: the same counter records again, no restart
        for token in tokens:
            scan = scan_once(counter, panel, token)
            assert scan is not None
            assert scan.verdict.reason is (Reason.ALREADY_REDEEMED if token in recorded else Reason.ACCEPTED)
        assert counter.ledger.accepted_count() == len(tokens)


def test_a_counter_started_on_a_full_disk_waits_for_space_saying_so_then_scans(
    small_disk: Path, write_config: WriteConfig, mint: Mint
) -> None:
    """The unit would not restart a counter that exited at start-up (the start limit): it waits."""
    config = write_config('[camera]\nsource = "keyboard"')
    assert device_command("verify", "--config", config, mint()).returncode == 0  # a ledger, closed
    filler = fill(small_disk)
    proc = start_device("run", "--config", config)
    assert proc.stdin and proc.stdout and proc.stderr
    log: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr

    def read_log() -> None:
        for entry in stderr:
            log.put(entry)

    threading.Thread(target=read_log, daemon=True).start()
    try:
        while "ledger_full" not in (line := log.get(timeout=60)):  # a hang guard, not a timing
            pass
        assert "the disk is full" in json.loads(line)["error"]
        filler.unlink()  # space returns
        proc.stdin.write(mint() + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("accepted")
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0
