"""One hot deal on a Redis Cluster, its stock in 1 bucket and in N: where the Redis work goes.

A deal's keys share one cluster slot, so one viral deal is served by one primary however big
the cluster is; a deal split into buckets (docs/backend-storage.md, "Buckets") has a slot per
bucket. This bench shows the difference on a cluster of its own: three primaries of the
machine's redis-server, no replicas, on free loopback ports, stopped at the end (also on
Ctrl-C or an error).

For each --buckets count, --runs times: a deal with a large stock is loaded through the Redis
claim gate (``RedisClaimGate``, ``cluster=True``), --tasks asyncio tasks claim it with
``claim_async`` (every claim a new user and Idempotency-Key; no HTTP, the point is Redis) for
--seconds after a short warm-up, and each primary's CPU time (utime + stime of its
redis-server, /proc/PID/stat) is read before and after. The table gives the median run:
claims/s, Redis CPU us per claim on each primary, and the busiest primary's share of all
the Redis CPU. The deal id is the first ``hot-K`` whose largest bucket count lands on as many
primaries as it can (a bucket's slot comes from the deal id); the line per run names them.

Then a sell-out check per bucket count: --check-stock units, per-user limit 1, claimed first by
exactly that many users (every one must be issued: ``sold_out`` before every bucket is empty
would refuse one) and then by half as many more (every one ``sold_out``); the outbox must hold
exactly the vouchers issued. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import whole_number

from .rediscluster import Cluster, running_cluster

if TYPE_CHECKING:
    from shopcardd_backend.gates.redis import RedisClaimGate

PRIMARIES = 3
WARM_UP_SECONDS = 0.5
UNAVAILABLE_RETRIES = 20
GOT_A_VOUCHER = {"issued", "replayed"}
"""A new gate's cluster client retries the claims in flight when it refreshes its slot map at
first (a connection closed under them): the retry answers ``replayed``, the same voucher."""


def bucket_counts(text: str) -> list[int]:
    """An argparse type: a comma-separated list of bucket counts, each 1 or more."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers like 1,3") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"bucket counts must be 1 or more, not {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--buckets", type=bucket_counts, default=[1, 3], help="bucket counts to compare (default 1,3)"
    )
    parser.add_argument(
        "--seconds", type=whole_number(1), default=5, help="claiming time of each run (default 5)"
    )
    parser.add_argument(
        "--runs", type=whole_number(1), default=3, help="runs per bucket count, the median shown (default 3)"
    )
    parser.add_argument(
        "--tasks",
        type=whole_number(1, 100),
        default=64,
        help="concurrent claiming tasks (default 64; at most 100, the cluster client's connections per node)",
    )
    parser.add_argument(
        "--stock",
        type=whole_number(1),
        default=10_000_000,
        help="the measured deal's stock (default 10000000)",
    )
    parser.add_argument(
        "--check-stock",
        type=whole_number(2),
        default=2_000,
        help="the sell-out check's stock (default 2000); 1.5 times as many users claim it",
    )


def spread_deal(cluster: Cluster, buckets: int) -> tuple[str, list[int]]:
    """The first deal id ``hot-K`` whose ``buckets`` buckets sit on as many primaries as there
    are (or buckets), and the primary port of each bucket: a bucket's slot comes from its tag,
    so an unlucky id puts two buckets on one primary and measures that instead."""
    from redis.crc import key_slot

    from shopcardd_backend.gates.redis import bucket_tag

    wanted = min(buckets, cluster.primaries)
    for k in range(1000):
        deal = f"hot-{k}"
        tags = [f"{{{bucket_tag(deal, bucket)}}}" for bucket in range(buckets)]
        ports = [cluster.port_of_slot(key_slot(tag.encode())) for tag in tags]
        if len(set(ports)) == wanted:
            return deal, ports
    raise RuntimeError(f"no deal id spreads {buckets} buckets over {wanted} primaries")


@dataclass
class Run:
    claims_per_second: float
    cpu_us: dict[int, float]
    """Redis CPU microseconds per claim, per primary port."""
    outcomes: Counter[str]

    @property
    def busiest_share(self) -> float:
        total = sum(self.cpu_us.values())
        return max(self.cpu_us.values()) / total if total else 0.0


def _gate(cluster: Cluster) -> RedisClaimGate:
    from shopcardd_backend.gates.redis import RedisClaimGate

    return RedisClaimGate(cluster.url, prefix=f"hd-{uuid.uuid4().hex[:8]}", cluster=True, socket_timeout=10)


def _load(gate: RedisClaimGate, deal: str, stock: int, buckets: int) -> None:
    from shopcardd_backend.gates.base import DealTerms

    gate.load_deal(DealTerms(deal, "bench", stock, 1, 3600, buckets=buckets))


async def _claim(gate: RedisClaimGate, deal: str, user: str) -> tuple[str, str | None]:
    """One claim by a new user with a new Idempotency-Key: (outcome, voucher id if issued).
    An unavailable answer is retried with the same key, as a client does (a new cluster client
    sees connections closed while it learns the slot map)."""
    from shopcardd_backend.gates.base import ClaimAttempt, GateUnavailable
    from shopcardd_voucher import new_voucher_id

    attempt = ClaimAttempt(deal, user, f"k-{user}", new_voucher_id(), int(time.time()))
    for _ in range(UNAVAILABLE_RETRIES):
        try:
            decision = await gate.claim_async(attempt)
            return str(decision.outcome), decision.voucher.voucher_id if decision.voucher else None
        except GateUnavailable:
            await asyncio.sleep(0.05)
    return "unavailable", None


async def _measure(cluster: Cluster, gate: RedisClaimGate, deal: str, args: argparse.Namespace) -> Run:
    """``--tasks`` tasks claim for the warm-up and ``--seconds``; the window in between counts."""
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def claimer(task: int) -> None:
        n = 0
        while not stop.is_set():
            outcome, _ = await _claim(gate, deal, f"u{task}-{n}")
            outcomes[outcome] += 1
            n += 1

    tasks = [asyncio.create_task(claimer(task)) for task in range(args.tasks)]
    try:
        await asyncio.sleep(WARM_UP_SECONDS)
        before, cpu_before, started = outcomes.total(), cluster.cpu(), time.perf_counter()
        await asyncio.sleep(args.seconds)
        after, cpu_after, elapsed = outcomes.total(), cluster.cpu(), time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await gate.aclose()
    claims = max(after - before, 1)
    cpu_us = {port: (cpu_after[port] - cpu_before[port]) * 1e6 / claims for port in cluster.nodes}
    return Run(claims / elapsed, cpu_us, outcomes)


async def _sell_out(gate: RedisClaimGate, deal: str, stock: int, tasks: int) -> list[str]:
    """The sell-out check on a loaded deal of ``stock`` units; the problems found."""
    problems: list[str] = []
    slots = asyncio.Semaphore(tasks)  # a claim in flight holds a connection: at most --tasks

    async def claim(user: str) -> tuple[str, str | None]:
        async with slots:
            return await _claim(gate, deal, user)

    try:
        first = await asyncio.gather(*(claim(f"s{n}") for n in range(stock)))
        late = await asyncio.gather(*(claim(f"s{n}") for n in range(stock, stock * 3 // 2)))
    finally:
        await gate.aclose()
    early = Counter(outcome for outcome, _ in first)
    if set(early) - GOT_A_VOUCHER or len({voucher for _, voucher in first}) != stock:
        problems.append(f"the first {stock} users (one unit each) got {dict(early)}")
    refused = Counter(outcome for outcome, _ in late)
    if refused != Counter({"sold_out": len(late)}):
        problems.append(f"the {len(late)} users after the stock got {dict(refused)}")
    issued = sorted({voucher for _, voucher in [*first, *late] if voucher})
    outbox = sorted(str(event.payload["voucher_id"]) for event in gate.read_outbox(deal_id=deal, limit=None))
    if outbox != issued:
        problems.append(f"the outbox holds {len(outbox)} vouchers, {len(issued)} were issued, or others")
    left = gate.stock_left(deal) or 0
    if len(issued) != stock or left:
        problems.append(f"{len(issued)} vouchers issued, {left} units left, of a stock of {stock}")
    return problems


def _print_table(rows: dict[int, Run], ports: list[int]) -> None:
    primaries = "  ".join(f"{f'primary {n + 1} us':>12}" for n in range(len(ports)))
    print(f"{'buckets':>7}  {'claims/s':>9}  {primaries}  {'busiest share':>13}")
    for buckets, run in rows.items():
        cells = "  ".join(f"{run.cpu_us[port]:>12.1f}" for port in ports)
        print(f"{buckets:>7}  {run.claims_per_second:>9,.0f}  {cells}  {run.busiest_share:>13.0%}")
    print("(Redis CPU us per claim on each primary, median run; busiest share: of all the Redis CPU)")


def run(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("hotdeal needs redis-server and redis-cli (Debian: apt install redis-server)", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted: the cluster is stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    rows: dict[int, Run] = {}
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="hotdeal-") as tmp,
        running_cluster(Path(tmp), primaries=PRIMARIES) as cluster,
    ):
        ports = list(cluster.nodes)
        deal, spread = spread_deal(cluster, max(args.buckets))
        for buckets in args.buckets:
            on = sorted({ports.index(port) + 1 for port in spread[:buckets]})
            runs: list[Run] = []
            for number in range(1, args.runs + 1):
                gate = _gate(cluster)
                try:
                    _load(gate, deal, args.stock, buckets)
                    measured = asyncio.run(_measure(cluster, gate, deal, args))
                finally:
                    gate.close()
                runs.append(measured)
                if set(measured.outcomes) - GOT_A_VOUCHER:
                    problems.append(f"{buckets} buckets, run {number}: {dict(measured.outcomes)}")
                cpu = " ".join(f"{measured.cpu_us[port]:.1f}" for port in ports)
                print(
                    f"{buckets} bucket(s) of {deal} on primaries {on}, run {number}/{args.runs}: "
                    f"{measured.claims_per_second:,.0f} claims/s, Redis us per claim per primary {cpu} "
                    f"({measured.outcomes['replayed']} of {measured.outcomes.total()} answered replayed)",
                    file=sys.stderr,
                    flush=True,
                )
            rows[buckets] = sorted(runs, key=lambda r: r.claims_per_second)[len(runs) // 2]
        _print_table(rows, ports)
        for buckets in args.buckets:
            gate = _gate(cluster)
            try:
                _load(gate, deal, args.check_stock, buckets)
                found = asyncio.run(_sell_out(gate, deal, args.check_stock, args.tasks))
            finally:
                gate.close()
            problems += [f"sell-out, {buckets} buckets: {problem}" for problem in found]
            verdict = "; ".join(found) or "exactly the stock issued, then only sold_out, the outbox exact"
            print(
                f"sell-out check, {buckets} bucket(s): stock {args.check_stock}, "
                f"{args.check_stock * 3 // 2} users claiming one each: {verdict}"
            )
    print(f"checks: {'; '.join(problems) or 'all passed'}")
    return 1 if problems else 0
