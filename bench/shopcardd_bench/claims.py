"""Claims per second and API CPU per claim of the claim API on the Redis profile, driven by wrk.

Starts the API as shopcardd-backend serve runs it (the same code: --workers processes), and
beside it as many processes of plain uvicorn serving the same app with a bare endpoint
(shopcardd_bench/claims_server.py), on a redis-server of its own on a free
port (or --redis-url, or with --redis-cluster N a Redis Cluster of its own, N primaries on
free loopback ports), with RabbitMQ named (a virtual host of the bench's own in --amqp-url's
RabbitMQ, made with rabbitmqctl), so that the API only claims and writes the outbox, as in
production, where the relays run apart. It registers a merchant and mints --users user tokens
with the backend's own commands. A warm-up sends every one of those tokens to the API a few
times without an Idempotency-Key (each answered 422 once the token is checked), so that every
process has them in its cache, as it has for users who claimed before.

In a flash sale most customers claim once: their token is new to every API process, which
checks its signature. So, run by run, it creates a deal with stock for every claim and drives
wrk (--connections open, one claim in flight on each, a fresh Idempotency-Key per claim) for
--duration seconds three times: at the claim route with cold traffic (--cold-share of the
claims bring a token minted for this run alone, a new user's; the others a cached token), at
the claim route with warm traffic (cached tokens only), and at the bare endpoint: a naive
async FastAPI route doing the same work (it checks every token, so cached or not is the same
to it). Around each wrk run it reads the CPU time of the API processes and of redis-server
(every node of a cluster) from /proc, and prints claims/s, p50/p95/p99 latency, API and Redis
CPU microseconds per issued claim, the outcome counts, and the same-run ratios of the claim
route's API CPU per claim, cold and warm, to the bare endpoint's (medians of --runs, after
one warm-up run), with the load average of the machine. Afterwards a sell-out: --sellout-stock
vouchers, one per user, claimed by all users for 5 s; it checks that exactly the stock was
issued, and for every deal of the bench that the gate's stock, the outbox and the answers
agree (nothing oversold, nobody over the limit). A PNG (--plot) shows throughput and probe
latency over the run.

wrk must be installed (Debian/Ubuntu: apt-get install wrk; .ci/run installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from shopcardd_commands.commandline import whole_number

from .claims_measure import BIG_LIMIT, BIG_STOCK, KINDS, Measured, Session, check_deals, measure_through_nginx
from .claims_report import print_table, write_plot
from .claims_traffic import CLAIM_PATH, Probe, create_deal, run_wrk
from .pipeline import DEFAULT_AMQP_URL, rabbitmq_vhost
from .processes import cpu_seconds, process_tree
from .served import backend_command, own_redis, running_backend

WRK_MISSING = "wrk is not installed: apt-get install wrk (Debian, Ubuntu), brew install wrk (macOS)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=whole_number(1), default=2, help="API processes (default 2)")
    parser.add_argument("--users", type=whole_number(1), default=20_000, help="users (default 20000)")
    parser.add_argument(
        "--concurrency",
        "--connections",
        dest="connections",
        type=whole_number(1),
        default=64,
        help="claims in flight: wrk connections, one claim on each (default 64)",
    )
    parser.add_argument("--threads", type=whole_number(1), default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--duration", type=whole_number(1), default=10, help="seconds of each wrk run (default 10)"
    )
    parser.add_argument("--runs", type=whole_number(1), default=3, help="measured runs (default 3)")
    parser.add_argument(
        "--warm-passes",
        type=whole_number(0),
        default=None,
        help="times each token is sent before measuring, so every process caches it (default 3 x workers)",
    )
    parser.add_argument(
        "--cold-share",
        type=share,
        default=0.9,
        help="share of the claims of a cold run (0 to 1) that bring a token no API process has "
        "seen, the rest a cached one (default 0.9: most customers claim once)",
    )
    parser.add_argument(
        "--sellout-stock", type=whole_number(1), default=2000, help="stock of the sell-out (default 2000)"
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="then send cold claims through nginx with the repository's site "
        "(systemd/nginx/shopcardd-api.conf): once as fast as they go (the rate the API sustains "
        "behind nginx, whose work shares the cores), then at 80 %% of that rate, on a schedule, "
        "and print the latency (nginx must be installed)",
    )
    parser.add_argument(
        "--amqp-url",
        default=DEFAULT_AMQP_URL,
        help="the RabbitMQ the API names (a vhost of the bench's own is made in it); the API then "
        "only writes the outbox and relays nothing",
    )
    redis = parser.add_mutually_exclusive_group()
    redis.add_argument("--redis-url", default=None, help="an existing Redis (default: start one)")
    redis.add_argument(
        "--redis-cluster",
        type=whole_number(1),
        default=None,
        metavar="PRIMARIES",
        help="start a Redis Cluster of this many primaries (no replicas) and serve the claims on it "
        "(SHOPCARDD_REDIS_CLUSTER=true); Redis CPU is its nodes' together",
    )
    parser.add_argument("--mongodb-uri", default=None, help="MongoDB of the store (default SQLite)")
    parser.add_argument(
        "--plot", type=Path, default=Path("claims-bench.png"), help="PNG to write (default claims-bench.png)"
    )
    parser.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the HTTP server of the API processes: uvicorn (what serve runs; default) or granian",
    )


def share(text: str) -> float:
    """A share from 0 to 1, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1")
    return value


def _redis_of(
    args: argparse.Namespace, folder: Path, stack: contextlib.ExitStack
) -> tuple[str, Callable[[], float]]:
    """The URL of the Redis the claims use (--redis-url, a cluster of the bench's own, or a
    redis-server of its own) and how to read its CPU seconds."""
    if args.redis_cluster:
        from .rediscluster import running_cluster

        (folder / "cluster").mkdir()
        cluster = stack.enter_context(running_cluster(folder / "cluster", primaries=args.redis_cluster))
        return cluster.url, lambda: sum(cluster.cpu().values())
    url = args.redis_url or stack.enter_context(own_redis(folder / "redis"))
    return url, lambda: _redis_cpu(url)


def _redis_cpu(url: str) -> float:
    """redis-server's CPU seconds: from /proc when it runs here, else its own INFO."""
    import redis

    with redis.Redis.from_url(url) as client:
        pid = int(client.info("server")["process_id"])
        with contextlib.suppress(OSError):
            return cpu_seconds(pid)
        cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 1
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPCARDD_", "PROMETHEUS_"))}
    args.redis_prefix = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="shopcardd-bench-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        redis_url, redis_cpu = _redis_of(args, folder, stack)
        env = {
            **base,
            "SHOPCARDD_DATA_DIR": str(folder / "data"),
            "SHOPCARDD_REDIS_URL": redis_url,
            "SHOPCARDD_REDIS_PREFIX": args.redis_prefix,
            "SHOPCARDD_REDIS_CLUSTER": "true" if args.redis_cluster else "false",
            # As in production, relays run apart: the API only writes the outbox (the API never
            # connects to RabbitMQ; without this it would relay the events itself, in-process).
            "SHOPCARDD_AMQP_URL": stack.enter_context(rabbitmq_vhost(args.amqp_url)),
            # wrk is one address sending thousands of claims a second: the rate limits stay on,
            # so their cost is in the figures, but high enough never to refuse.
            "SHOPCARDD_CLAIM_RATE_PER_USER": str(10**9),
            "SHOPCARDD_CLAIM_RATE_PER_ADDRESS": str(10**9),
        }
        if args.mongodb_uri:
            env["SHOPCARDD_MONGODB_URI"] = args.mongodb_uri
            env["SHOPCARDD_MONGODB_DATABASE"] = f"bench_{uuid.uuid4().hex[:8]}"
        api_key = backend_command(env, "merchant", "create", "--merchant", "bench").strip().splitlines()[-1]
        server = [sys.executable, "-m", "shopcardd_bench.claims_server", "--server", args.server]
        backend = stack.enter_context(running_backend(env, folder / "serve.log", args.workers, server))
        # After serve: user-token signs with the identity key serve makes, and never makes one.
        tokens = folder / "tokens.txt"
        tokens.write_text(backend_command(env, "user-token", *(f"u{i}" for i in range(args.users))))
        first_token = tokens.read_text().split("\n", 1)[0]
        # Each server's own metrics folder: serve empties the one it is given at start.
        (folder / "bare-metrics").mkdir()
        bare_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(folder / "bare-metrics")}
        plain = [*server[:-1], "plain-uvicorn"]
        bare = stack.enter_context(running_backend(bare_env, folder / "bare.log", args.workers, plain))
        from shopcardd_backend.gates.redis import RedisClaimGate

        probe = Probe(backend.url, first_token)
        cluster = bool(args.redis_cluster)
        gate = RedisClaimGate(redis_url, prefix=args.redis_prefix, cluster=cluster, socket_timeout=30)
        stack.enter_context(gate)
        pids = process_tree(backend.process.pid)
        session = Session(
            backend.url,
            pids,
            bare.url,
            process_tree(bare.process.pid),
            redis_cpu,
            api_key,
            tokens,
            args,
            probe,
            gate,
            env,
            folder,
        )
        passes = 3 * args.workers if args.warm_passes is None else args.warm_passes
        print(f"warm-up: every token {passes} times ...", file=sys.stderr)
        sent = 0
        while sent < args.users * passes:  # wrk runs for a time, not a count: 5 s at a time
            offset = sent - sent % args.threads
            warm = run_wrk(backend.url, CLAIM_PATH.format(deal="warm"), tokens, args, "warm", 5, offset)
            sent += sum(warm.statuses.values())
        rows: dict[str, list[Measured]] = {kind: [] for kind in KINDS}
        ratios: dict[str, list[float]] = {"cold": [], "warm": []}
        for number in range(args.runs + 1):
            order = list(KINDS)[number % 3 :] + list(KINDS)[: number % 3]  # rotate: fair to drift
            run_of = {kind: session.measure(kind) for kind in order}
            figures = ", ".join(
                f"{kind} {m.claims_per_second:,.0f}/s {m.api_us:.0f} us" for kind, m in run_of.items()
            )
            load = f"load average {os.getloadavg()[0]:.1f}"
            print(f"run {number}{' (warm-up)' if number == 0 else ''}: {figures}; {load}", file=sys.stderr)
            if number == 0:
                continue
            for kind, measured in run_of.items():
                rows[kind].append(measured)
            for kind, values in ratios.items():
                values.append(run_of[kind].api_us / run_of["bare"].api_us)
        print_table(rows, ratios, args)
        through_nginx: list[Measured] = []
        if args.nginx:
            cold_rate = statistics.median(m.claims_per_second for m in rows["cold"])
            through_nginx = measure_through_nginx(
                session, int(backend.url.rsplit(":", 1)[1]), folder, cold_rate
            )
        limits = dict.fromkeys(session.answers, BIG_LIMIT)
        stocks = dict.fromkeys(session.answers, BIG_STOCK)
        sellout = create_deal(backend.url, api_key, args.sellout_stock, 1)
        result = run_wrk(backend.url, CLAIM_PATH.format(deal=sellout), tokens, args, "claim", 5)
        session.answers[sellout] = result.statuses
        limits[sellout], stocks[sellout] = 1, args.sellout_stock
        problems = check_deals(session, limits, stocks)
        issued = stocks[sellout] - (session.gate.stock_left(sellout) or 0)
        # The claim route's 5xx fail the bench; the bare endpoint's are its own (a naive endpoint
        # answers 500 when the cluster client gives up), shown in its answers line.
        claimed = rows["cold"] + rows["warm"] + through_nginx
        fives = sum(n for m in claimed for s, n in m.wrk.statuses.items() if s >= 500)
        fives += sum(n for s, n in result.statuses.items() if s >= 500)
        if issued != args.sellout_stock:
            problems.append(f"sell-out: {issued} issued for a stock of {args.sellout_stock}")
        print(
            f"sell-out: stock {args.sellout_stock}, {args.users:,} users allowed one voucher each, claiming "
            f"for 5 s: {issued} issued, "
            + ", ".join(f"{status}: {n:,}" for status, n in sorted(result.statuses.items()))
        )
        verdict = "; ".join(problems) or "nothing oversold, nobody over the limit"
        print(f"checks: the {len(session.answers)} deals of the bench, 5xx answers {fives}; {verdict}")
        measured = [m for kind in KINDS for m in rows[kind]]
        write_plot(args.plot, measured, session.probe)
        print(f"plot: {args.plot}")
    return 1 if problems or fives else 0
