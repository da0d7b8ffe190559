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
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from shopcardd_commands.commandline import whole_number

from .pipeline import DEFAULT_AMQP_URL, rabbitmq_vhost
from .processes import cpu_seconds, process_tree, total_cpu_seconds
from .services import free_port

WRK_MISSING = "wrk is not installed: apt-get install wrk (Debian, Ubuntu), brew install wrk (macOS)"
BARE_PATH = "/bench/bare/deals/{deal}/claims"
CLAIM_PATH = "/v1/deals/{deal}/claims"
BIG_STOCK, BIG_LIMIT = 10_000_000, 1_000
"""Stock and per-user limit of a measured deal (the API's largest): every claim issues."""


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
        "(systemd/nginx/shopcardd-api.conf) at 80 %% of the cold claim rate, on a schedule, and "
        "print the latency (nginx must be installed)",
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


@dataclass
class WrkResult:
    statuses: Counter[int]
    per_second: dict[int, int]
    latency_us: dict[int, int]
    seconds: float
    socket_errors: int
    cold_sent: int = 0
    """Claims that brought a token new to every API process."""
    cold_short: int = 0
    """Claims that were to bring a new token when the run's supply had run out."""

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


@dataclass
class Measured:
    endpoint: str
    deal: str
    wrk: WrkResult
    api_cpu: float
    redis_cpu: float
    started: float
    issued: int
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    """The machine's load average (1 minute) when the run ended."""
    """Claims the gate issued on the deal (wrk does not count the answers in flight when it stops)."""

    @property
    def claims_per_second(self) -> float:
        return self.wrk.statuses[201] / self.wrk.seconds

    @property
    def api_us(self) -> float:
        return self.api_cpu / max(self.issued, 1) * 1e6

    @property
    def redis_us(self) -> float:
        return self.redis_cpu / max(self.issued, 1) * 1e6


@dataclass
class Backend:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_backend(
    env: dict[str, str], log_path: Path, workers: int = 1, server: list[str] | None = None
) -> Iterator[Backend]:
    """``shopcardd-backend serve`` (or ``server``, a command taking ``--port``/``--workers``) on a
    free port, once ``/readyz`` answers; stopped (SIGTERM) after."""
    import httpx

    port = free_port()
    argv = [*(server or [_backend_exe(), "serve"]), "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Backend(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _backend_exe() -> str:
    """The ``shopcardd-backend`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("shopcardd-backend"))


def backend_command(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([_backend_exe(), *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"shopcardd-backend {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def own_redis(folder: Path) -> Iterator[str]:
    """A redis-server of the bench's own on a free port (no persistence): its CPU is the claims'
    alone, and the machine's shared Redis is left in peace."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; pass --redis-url")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait()


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


def _wrk(
    url: str,
    path: str,
    tokens: Path,
    args: argparse.Namespace,
    mode: str,
    duration: int,
    offset: int = 0,
    cold: tuple[Path, float] | None = None,
    rate: float = 0,
) -> WrkResult:
    """One wrk run; ``cold``: a file of tokens new to every process and the share of the claims
    that bring one; ``rate``: claims per second on a schedule (0: as fast as they go)."""
    script = files("shopcardd_bench").joinpath("claims.lua")
    with as_file(script) as script_path:
        argv = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{duration}s"]
        argv += ["--timeout", "10s", "-s", str(script_path), url + path, "--"]
        argv += [str(tokens), path, uuid.uuid4().hex[:8], str(args.threads), mode, str(offset)]
        if cold is not None:
            argv += [str(cold[0]), repr(cold[1]), repr(rate / args.threads)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr.strip() or proc.stdout.strip()}")
    result = WrkResult(Counter(), {}, {}, 0.0, 0)
    for line in proc.stdout.splitlines():
        name, *values = line.split()
        if name == "status":
            result.statuses[int(values[0])] = int(values[1])
        elif name == "second":
            result.per_second[int(values[0])] = int(values[1])
        elif name == "latency":
            result.latency_us[int(values[0])] = int(values[1])
        elif name == "duration_us":
            result.seconds = int(values[0]) / 1e6
        elif name == "socket_errors":
            result.socket_errors = int(values[0])
        elif name == "cold_sent":
            result.cold_sent = int(values[0])
        elif name == "cold_short":
            result.cold_short = int(values[0])
    return result


class Probe:
    """One claim every 100 ms on its own connection, while wrk runs: latency over time as a
    client sees it, for the plot (wrk gives only the whole run's percentiles)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.issued: Counter[str] = Counter()

    def start(self, deal: str) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(deal,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, deal: str) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.wait(0.1):
                started = time.perf_counter()
                headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": uuid.uuid4().hex}
                answer = client.post(CLAIM_PATH.format(deal=deal), headers=headers)
                self.points.append((time.time(), (time.perf_counter() - started) * 1e3))
                if answer.status_code in (200, 201):
                    self.issued[deal] += 1


def _create_deal(url: str, api_key: str, stock: int, limit: int) -> str:
    import httpx

    body = {"title": "bench", "stock": stock, "per_user_limit": limit, "voucher_ttl_seconds": 3600}
    response = httpx.post(f"{url}/v1/deals", json=body, headers={"X-API-Key": api_key}, timeout=30)
    response.raise_for_status()
    return str(response.json()["deal_id"])


KINDS: dict[str, str] = {
    "cold": "claim route, cold",
    "warm": "claim route, warm",
    "bare": "bare FastAPI endpoint",
}
"""The three measures of a run: the claim route with new tokens (--cold-share of its claims),
with cached tokens only, and the bare endpoint."""


@dataclass
class Session:
    """What one bench run needs: the server, its processes, its Redis, the tokens."""

    url: str
    api_pids: list[int]
    bare_url: str
    bare_pids: list[int]
    """The bare endpoint's server: plain uvicorn, processes of its own."""
    redis_cpu: Callable[[], float]
    """CPU seconds of the Redis the claims use, so far (every node of a cluster)."""
    api_key: str
    tokens: Path
    args: argparse.Namespace
    probe: Probe
    gate: Any
    env: dict[str, str]
    folder: Path
    answers: dict[str, Counter[int]] = field(default_factory=dict)
    bare_deals: set[str] = field(default_factory=set)
    claims_per_second: float = 3_000.0
    """The highest claim rate seen so far: how many new tokens a cold run needs."""
    minted: int = 0

    def new_tokens(self) -> Path:
        """A file of tokens for users no API process has seen, enough for a cold run at
        1.5 times the highest rate seen so far."""
        count = int(self.claims_per_second * self.args.duration * self.args.cold_share * 1.5)
        count += self.args.connections
        users = [f"n{self.minted + i}" for i in range(count)]
        self.minted += count
        path = self.folder / "cold-tokens.txt"
        path.write_text(backend_command(self.env, "user-token", *users))
        return path

    def measure(self, kind: str, through: str | None = None, rate: float = 0) -> Measured:
        """One wrk run of ``kind`` on a deal of its own; ``through``: another URL in front of
        the API (nginx), and ``rate``, claims/s on a schedule there."""
        cold = (self.new_tokens(), self.args.cold_share) if kind == "cold" else None
        deal = _create_deal(self.url, self.api_key, BIG_STOCK, BIG_LIMIT)
        path = (BARE_PATH if kind == "bare" else CLAIM_PATH).format(deal=deal)
        url, pids = (self.bare_url, self.bare_pids) if kind == "bare" else (self.url, self.api_pids)
        url = through or url
        if kind == "cold":
            self.probe.start(deal)
        api0, redis0, started = total_cpu_seconds(pids), self.redis_cpu(), time.time()
        try:
            duration = self.args.duration
            result = _wrk(url, path, self.tokens, self.args, "claim", duration, cold=cold, rate=rate)
        finally:
            self.probe.stop()
        api1, redis1 = total_cpu_seconds(pids), self.redis_cpu()
        self.answers[deal] = result.statuses
        if kind == "bare":
            self.bare_deals.add(deal)
        elif through is None:
            self.claims_per_second = max(self.claims_per_second, result.sent / result.seconds)
        issued = BIG_STOCK - self.gate.stock_left(deal) - self.probe.issued[deal]
        return Measured(kind, deal, result, api1 - api0, redis1 - redis0, started, issued)


def _check_deals(session: Session, limits: dict[str, int], stocks: dict[str, int]) -> list[str]:
    """Every deal of the bench: stock never below zero, the outbox holds exactly the claims the
    stock went down by, every answer with a voucher among them (wrk leaves up to --connections
    answers unread when it stops), nobody above the per-user limit. Every key is fresh, so a 200
    is a claim the cluster client sent twice (a connection closed under it): issued once, and
    answered with its voucher. The bare endpoint's answers are not checked: on a cluster, where
    its client gives up after a claim was applied, it answers 500 (the naive way)."""
    problems = []
    for deal, answers in session.answers.items():
        left = session.gate.stock_left(deal)
        outbox = session.gate.read_outbox(deal_id=deal, limit=None)
        events = [e for e in outbox if "voucher_id" in e.payload]
        answered = answers[201] + answers[200] + session.probe.issued[deal]
        all_answered = answered <= len(events) <= answered + session.args.connections
        holders = Counter(e.payload["user_id"] for e in events)
        if (
            left is None
            or left < 0
            or stocks[deal] - left != len(events)
            or not (all_answered or deal in session.bare_deals)
        ):
            problems.append(
                f"deal {deal}: stock {stocks[deal]}, left {left}, {len(events)} events, {answered} answered "
                f"({', '.join(f'{status}: {n}' for status, n in sorted(answers.items()))})"
            )
        if holders and max(holders.values()) > limits[deal]:
            problems.append(f"deal {deal}: a user holds {max(holders.values())} > {limits[deal]}")
    return problems


def _print_table(
    rows: dict[str, list[Measured]], ratios: dict[str, list[float]], args: argparse.Namespace
) -> None:
    where = "the Redis profile"
    if args.redis_cluster:
        where = f"a Redis Cluster of {args.redis_cluster} primaries"
    loads = [m.load for measured in rows.values() for m in measured]
    print(
        f"claims on {where}: {args.workers} API processes ({args.server}), "
        f"wrk {args.threads} threads x {args.connections} connections, {args.users} users cached, "
        f"cold runs {args.cold_share:.0%} new tokens, {args.duration} s per run; median of "
        f"{args.runs} runs (after 1 warm-up); load average {min(loads):.1f} to {max(loads):.1f}"
    )
    head = f"{'endpoint':<26} {'claims/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}"
    print(f"{head} {'API us/claim':>13} {'Redis us/claim':>15} {'claims/s/core':>14}")
    for kind, measured in rows.items():
        rate = statistics.median(m.claims_per_second for m in measured)
        api_us = statistics.median(m.api_us for m in measured)
        p = {q: statistics.median(m.wrk.latency_us[q] for m in measured) / 1e3 for q in (50, 95, 99)}
        print(
            f"{KINDS[kind]:<26} {rate:>9,.0f} {p[50]:>7.1f} {p[95]:>7.1f} {p[99]:>7.1f} {api_us:>13.0f} "
            f"{statistics.median(m.redis_us for m in measured):>15.0f} {1e6 / api_us:>14,.0f}"
        )
    for kind, values in ratios.items():
        print(
            f"same-run ratio of API CPU per claim, claim route {kind} / bare endpoint: "
            f"{statistics.median(values):.2f} (runs: {', '.join(f'{r:.2f}' for r in values)})"
        )
    for kind, measured in rows.items():
        outcomes: Counter[int] = Counter()
        for m in measured:
            outcomes.update(m.wrk.statuses)
        errors = sum(m.wrk.socket_errors for m in measured)
        counts = ", ".join(f"{status}: {n:,}" for status, n in sorted(outcomes.items()))
        extra = ""
        if kind == "cold":
            sent = sum(m.wrk.cold_sent for m in measured)
            short = sum(m.wrk.cold_short for m in measured)
            extra = f"; {sent / max(sum(m.wrk.sent for m in measured), 1):.0%} with a new token"
            extra += f" ({short:,} short of new tokens)" if short else ""
        print(f"answers ({KINDS[kind]}, measured runs): {counts}; socket errors {errors}{extra}")


def _through_nginx(session: Session, api_port: int, folder: Path, cold_rate: float) -> list[Measured]:
    """Cold claims through nginx with the repository's site (both upstream servers pointing at
    the API's port) at 80 % of the cold claim rate measured direct, on a schedule: the latency
    a customer sees at that load, run by run and the median."""
    from .nginx import running_nginx

    rate = 0.8 * cold_rate
    runs: list[Measured] = []
    port = free_port()
    with running_nginx(folder / "nginx", [api_port, api_port], port):
        through = f"http://127.0.0.1:{port}"
        for number in range(session.args.runs):
            m = session.measure("cold", through=through, rate=rate)
            runs.append(m)
            p99 = m.wrk.latency_us[99] / 1e3
            figures = f"{m.claims_per_second:,.0f}/s p99 {p99:.1f} ms; load average {m.load:.1f}"
            print(f"nginx run {number + 1}: {figures}", file=sys.stderr)
    p = {q: statistics.median(m.wrk.latency_us[q] for m in runs) / 1e3 for q in (50, 95, 99)}
    done = statistics.median(m.claims_per_second for m in runs)
    outcomes: Counter[int] = Counter()
    for m in runs:
        outcomes.update(m.wrk.statuses)
    print(
        f"through nginx (the repository's site), cold, at 80 % of {cold_rate:,.0f} claims/s: asked "
        f"{rate:,.0f}/s, got {done:,.0f}/s; p50 {p[50]:.1f} ms, p95 {p[95]:.1f} ms, p99 {p[99]:.1f} ms "
        f"(median of {len(runs)} runs: p99 {', '.join(f'{m.wrk.latency_us[99] / 1e3:.1f}' for m in runs)}); "
        + ", ".join(f"{status}: {n:,}" for status, n in sorted(outcomes.items()))
    )
    return runs


def _plot(path: Path, measured: list[Measured], probe: Probe) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(m.started for m in measured)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for m in measured:
        seconds = sorted(m.wrk.per_second.items())[1:-1]  # the first and last are partial
        style = {"cold": "tab:blue", "warm": "tab:green"}.get(m.endpoint, "tab:gray")
        top.plot([s - start for s, _ in seconds], [n for _, n in seconds], color=style, marker=".")
    top.set_ylabel("answers/s (claim route: blue cold, green warm; grey: bare)")
    bottom.plot([t - start for t, _ in probe.points], [ms for _, ms in probe.points], ".", color="tab:red")
    bottom.set_ylabel("probe claim latency (cold runs), ms")
    bottom.set_xlabel("seconds since the first measured run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
            warm = _wrk(backend.url, CLAIM_PATH.format(deal="warm"), tokens, args, "warm", 5, offset)
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
        _print_table(rows, ratios, args)
        through_nginx: list[Measured] = []
        if args.nginx:
            cold_rate = statistics.median(m.claims_per_second for m in rows["cold"])
            through_nginx = _through_nginx(session, int(backend.url.rsplit(":", 1)[1]), folder, cold_rate)
        limits = dict.fromkeys(session.answers, BIG_LIMIT)
        stocks = dict.fromkeys(session.answers, BIG_STOCK)
        sellout = _create_deal(backend.url, api_key, args.sellout_stock, 1)
        result = _wrk(backend.url, CLAIM_PATH.format(deal=sellout), tokens, args, "claim", 5)
        session.answers[sellout] = result.statuses
        limits[sellout], stocks[sellout] = 1, args.sellout_stock
        problems = _check_deals(session, limits, stocks)
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
        _plot(args.plot, measured, session.probe)
        print(f"plot: {args.plot}")
    return 1 if problems or fives else 0
