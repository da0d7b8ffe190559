"""Sync: the time a counter takes to upload its redemptions to a served backend over loopback.

Starts ``shopcardd-backend serve`` (embedded profile, one process) on a free port, registers a
merchant, and for each run enrols a new counter (``shopcardd-provision enroll``'s code), fills
its ledger with --redemptions redemptions and times one ``shopcardd-device sync`` of them
(the device's own code, in this process): batches of --batch-size, a new device token per
request, each answer committed to the ledger before the next batch. Filling the ledger is not
timed (its rows are recorded without fsync, to save the minutes a durable commit per row would
take). The figure is the median over the runs, after one warm-up run; client and server share
this machine's cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from shopcardd_commands.commandline import whole_number
from shopcardd_voucher import Reason, Verdict, Voucher

MERCHANT = "bench-shop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redemptions", type=whole_number(1), default=10_000, help="redemptions per sync (default 10000)"
    )
    parser.add_argument(
        "--batch-size",
        type=whole_number(1, 500),
        default=200,
        help="redemptions per request, as [sync] batch_size (default 200, the device's default; at most 500)",
    )
    parser.add_argument("--runs", type=whole_number(1), default=3, help="measured runs (default 3)")


def enrol_counter(url: str, api_key: str, device_id: str, folder: Path, merchant: str = MERCHANT) -> Path:
    """Enrol ``device_id`` and write its bundle into ``folder``; the path of its ``device.toml``."""
    from shopcardd_provision.enroll import CONFIG_FILE, enroll

    enroll(merchant, device_id, url, folder, api_key, data_dir="data")
    return folder / CONFIG_FILE


def fill_ledger(
    ledger_path: Path, count: int, *, device_id: str, merchant: str, deal: str, now: float
) -> list[str]:
    """Record ``count`` redemptions (valid for an hour from ``now``) in device ``device_id``'s ledger
    (a ledger is one device's); their voucher ids.

    Through the ledger's own ``record``, but without fsync (``synchronous = OFF`` on this one
    connection): a durable commit per row would take minutes, and recording is not what is timed.
    """
    from shopcardd_device.ledger import Ledger

    ids = [f"bench-{os.urandom(8).hex()}" for _ in range(count)]
    with Ledger(ledger_path, device_id=device_id) as ledger:
        ledger._db.execute("PRAGMA synchronous = OFF")
        for number, voucher_id in enumerate(ids):
            voucher = Voucher(voucher_id, deal, f"u{number}", merchant, int(now), int(now) + 3600, None, "k")
            ledger.record(
                Verdict(Reason.ACCEPTED, voucher),
                raw="",
                device_id=device_id,
                scanned_at=now,
                clock_at=now,
                time_floor=None,
            )
    return ids


def _one_run(url: str, api_key: str, folder: Path, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds to sync ``--redemptions`` redemptions from a new counter, and the requests sent."""
    from shopcardd_device.config import DeviceConfig
    from shopcardd_device.runtime import open_counter

    config = DeviceConfig.load(enrol_counter(url, api_key, folder.name, folder))
    config = dataclasses.replace(config, sync=dataclasses.replace(config.sync, batch_size=args.batch_size))
    with open_counter(config) as device:
        fill_ledger(
            config.ledger_path,
            args.redemptions,
            device_id=config.device_id,
            merchant=MERCHANT,
            deal="d-bench",
            now=time.time(),
        )
        started = time.perf_counter()
        report = device.sync()
        elapsed = time.perf_counter() - started
        if report.uploaded != args.redemptions or device.counter.ledger.unsynced_count():
            raise RuntimeError(f"synced {report.uploaded} of {args.redemptions} redemptions")
    return elapsed, report.requests


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .served import backend_command, running_backend

    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    with tempfile.TemporaryDirectory(prefix="shopcardd-bench-sync-") as tmp:
        folder = Path(tmp)
        env = {**base, "SHOPCARDD_DATA_DIR": str(folder / "backend")}
        with running_backend(env, folder / "serve.log") as backend:
            created = backend_command(env, "merchant", "create", "--merchant", MERCHANT)
            api_key = created.strip().splitlines()[-1]
            runs = [
                _one_run(backend.url, api_key, folder / f"counter-{n}", args)
                for n in tqdm(range(args.runs + 1), desc="sync", unit="run", leave=False, disable=None)
            ]
    measured = runs[1:]  # the first run warms the server and the connection
    seconds = statistics.median(elapsed for elapsed, _ in measured)
    print(
        f"shopcardd-device sync to a served backend over loopback (embedded profile, one process); "
        f"median of {args.runs} runs after 1 warm-up"
    )
    print(f"{'redemptions':>11} {'batch':>6} {'requests':>8} {'seconds':>8} {'redemptions/s':>14}")
    print(
        f"{args.redemptions:>11} {args.batch_size:>6} {measured[0][1]:>8} {seconds:>8.2f} "
        f"{args.redemptions / seconds:>14.0f}"
    )
    return 0
