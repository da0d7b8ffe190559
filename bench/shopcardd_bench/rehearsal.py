"""A dress rehearsal of a sale: the production topology (docs/production.md) on loopback, a flash
sale through it while parts fail, and whether anything was lost.

It stands up, each piece on free ports of its own and never the machine's Redis or RabbitMQ:
nginx with the repository's site and a certificate from ``shopcardd-provision tls`` (HTTP/2 to
the customers), --api API processes behind it, a Redis Cluster of 3 primaries and 3 replicas,
RabbitMQ as a 3-node cluster with quorum queues, SecantusDB as MongoDB, 2 relays, a persist,
notify and analytics worker, a mail and an SMS sink, and a shop of 3 counters enrolled through
nginx over https, the shop LAN on, synced every --sync-every seconds.

For --seconds, customers claim through nginx as fast as the machine answers (most once, some
again with the same key; one hot deal spread over buckets) while the counters scan vouchers as
they are brought. Faults, on a schedule printed at the start: a Redis primary killed (its replica
takes over); one API process, one relay and the persist worker killed and started again; the
RabbitMQ node leading the persist queue stopped and started again; one counter cut off the
backend and the LAN, with two vouchers redeemed on purpose at it and at another counter; and a
voucher redeemed at one counter brought to the next, which the shop LAN must refuse.

Then each invariant is one line with its figure, `N passed, M failed`, exit 1 on any failure;
report.md and timeline.png in --report (default: a new folder in the system's temp folder).
Ctrl-C stops everything it started (exit 130), and so does SIGTERM (exit 143: a CI job's
timeout, a service manager).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from shopcardd_commands.commandline import whole_number

from .rehearsal_checks import Checks, check_everything
from .rehearsal_faults import schedule
from .rehearsal_report import Timeline, write_report
from .rehearsal_topology import topology

MERCHANT = "m-rehearsal"


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds from 0.1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be from 0.1 to 3600 seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=whole_number(10), default=60, help="length of the sale (default 60)"
    )
    parser.add_argument(
        "--api", type=whole_number(2, 64), default=2, help="API processes behind nginx (default 2)"
    )
    parser.add_argument(
        "--in-flight", type=whole_number(1, 2000), default=24, help="claims in flight at once (default 24)"
    )
    parser.add_argument(
        "--connections", type=whole_number(1, 200), default=4, help="HTTP/2 connections to nginx (default 4)"
    )
    parser.add_argument(
        "--hot-stock", type=whole_number(1), default=500, help="stock of the hot deal (default 500)"
    )
    parser.add_argument(
        "--buckets", type=whole_number(1, 256), default=6, help="buckets of each deal (default 6)"
    )
    parser.add_argument(
        "--sync-every", type=_seconds, default=20.0, help="seconds between a counter's syncs (default 20)"
    )
    parser.add_argument(
        "--scan-every", type=_seconds, default=0.5, help="seconds between scans at the shop (default 0.5)"
    )
    parser.add_argument(
        "--latency-goal-ms", type=float, default=50.0, help="the claim p99 goal through nginx (default 50)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, metavar="DIR", help="where report.md and timeline.png go"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is: the stack of what was started unwinds."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Terminated


def run(args: argparse.Namespace) -> int:
    folder = args.report or Path(tempfile.mkdtemp(prefix="shopcardd-rehearsal-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _rehearse(args, folder)
    except KeyboardInterrupt as stopped:
        print("\ninterrupted: everything the rehearsal started is stopped", file=sys.stderr)
        return 143 if isinstance(stopped, Terminated) else 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"shopcardd-bench rehearsal: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, before)


def _rehearse(args: argparse.Namespace, folder: Path) -> int:
    import httpx
    import jwt

    from .pipeline import Answers
    from .shop import Shop

    print(f"rehearsal: standing up the production topology on loopback (files in {folder})", flush=True)
    with topology(args, folder) as top, ExitStack() as stack:
        backend = str(Path(sys.executable).with_name("shopcardd-backend"))
        made = subprocess.run(
            [backend, "merchant", "create", "--merchant", MERCHANT],
            env=top.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        top.api_key = made.stdout.splitlines()[-1].strip()
        client = stack.enter_context(httpx.Client(base_url=top.url, verify=str(top.ca), timeout=30))
        deals = {}
        for name, stock in [("hot", args.hot_stock), ("everyday", 1_000_000)]:
            answer = client.post(
                "/v1/deals",
                headers={"X-API-Key": top.api_key},
                json={
                    "title": f"Rehearsal {name} deal",
                    "stock": stock,
                    "per_user_limit": 1,
                    "voucher_ttl_seconds": 86_400,
                },
            )
            answer.raise_for_status()
            deals[name] = answer.json()
        print("  the shop: 3 counters enrolled through nginx over https, LAN on", flush=True)
        shop = Shop(top.work / "shop", top.url, top.ca, top.api_key, MERCHANT, folder / "logs")
        shop.start(args.sync_every)
        stack.callback(shop.close)

        env = top.env
        secret, issuer, audience = (
            env["SHOPCARDD_USER_SECRET"],
            env["SHOPCARDD_USER_ISSUER"],
            env["SHOPCARDD_USER_AUDIENCE"],
        )

        def token_for(number: int) -> str:
            now = int(time.time())
            contact = (
                {"email": f"u{number}@rehearsal.test"}
                if number % 2 == 0
                else {"phone_number": f"+4470{number:08d}"}
            )
            claims = {
                "iss": issuer,
                "sub": f"u{number}",
                "aud": audience,
                "iat": now,
                "exp": now + 3600,
                **contact,
            }
            return jwt.encode(claims, secret, algorithm="HS256")

        from .sale import Claim, Sale

        answers = Answers()
        to_scan: list[str] = []
        scan_lock = threading.Lock()

        def on_voucher(claim: Claim) -> None:
            answers.add(claim.voucher_id or "")
            with scan_lock:
                if len(to_scan) < 10_000:
                    to_scan.append(claim.token or "")

        sale = Sale(
            top.url,
            str(top.ca),
            [deals["hot"]["deal_id"], deals["everyday"]["deal_id"]],
            token_for,
            args.in_flight,
            args.connections,
            on_voucher,
        )
        doubled: list[str] = []

        def take_voucher() -> str | None:
            with scan_lock:
                return to_scan.pop() if to_scan else None

        def voucher_for_a_fault() -> str | None:
            """A voucher to scan; on a machine slow to answer the sale's first claims, waited
            for up to half the sale, so the fault still ends before the sale does."""
            deadline = time.monotonic() + args.seconds / 2
            while (token := take_voucher()) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            return token

        doubles_done = threading.Event()

        def doubles() -> None:
            """Two vouchers each redeemed at the cut counter and at another: the conflicts made on
            purpose. The cut lasts until both are done (``heal`` waits for this)."""
            cut, other = shop.counters[-1], shop.counters[0]
            try:
                for _ in range(2):
                    token = voucher_for_a_fault()
                    if token is None:
                        top.mark(f"no voucher to redeem twice within {args.seconds / 2:g} s")
                        return
                    cut.scan(token)
                    other.scan(token)
                    doubled.append(jwt.decode(token, options={"verify_signature": False})["jti"])
                top.mark(f"redeemed 2 vouchers at {cut.name} (cut off) and at {other.name}")
            finally:
                doubles_done.set()

        lan_probed: list[str] = []

        def lan_probe() -> None:
            """A voucher redeemed at one till, then brought to the next: the LAN told it."""
            first, second = shop.counters[0], shop.counters[1]
            token = voucher_for_a_fault()
            if token is None:
                top.mark(f"no voucher for the LAN probe within {args.seconds / 2:g} s")
                return
            first.scan(token)
            time.sleep(3.0)  # the customer walks to the next till
            second.scan(token)
            lan_probed.append(jwt.decode(token, options={"verify_signature": False})["jti"])
            top.mark(f"a voucher redeemed at {first.name} brought to {second.name}")

        faults = schedule(top, shop, deals["hot"]["deal_id"], args.seconds, doubles, doubles_done, lan_probe)
        print("\nfault schedule:")
        for fault in faults:
            print(f"  t+{fault.at:5.1f} s  {fault.what}")
        print(flush=True)
        timeline = Timeline(top, sale.tally, answers)
        stack.callback(timeline.stop)
        timeline.start()
        started = time.monotonic()
        top.mark("sale open")
        sale.start()
        shop.serve(take_voucher, args.scan_every)
        pending = list(faults)
        while (elapsed := time.monotonic() - started) < args.seconds:
            while pending and pending[0].at <= elapsed:
                fault = pending.pop(0)
                threading.Thread(target=fault.act, daemon=True).start()
            timeline.progress(elapsed, args.seconds)
            time.sleep(0.05)
        for fault in pending:
            fault.act()
        sale.join()
        top.mark("sale closed; the shop syncs once more, the pipeline drains")
        shop.close()  # its last syncs; the timeline keeps sampling through the drain
        checks = Checks()
        check_everything(
            checks, top, client, deals, sale.tally, answers, shop, doubled, lan_probed, timeline, args
        )
        timeline.stop()
        print()
        for line in checks.lines:
            print(line)
        failed = sum(not ok for ok, _ in checks.results)
        passed = len(checks.results) - failed
        print(f"\n{passed} passed, {failed} failed")
        write_report(folder, checks, top, timeline, faults, args, passed, failed)
        print(f"report: {folder / 'report.md'} and {folder / 'timeline.png'}")
        return 1 if failed else 0
