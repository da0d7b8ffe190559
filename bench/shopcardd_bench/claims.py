"""Claim throughput and latency of the claim API, one server process per profile.

Starts shopcardd-backend serve (one process) on a free port for each profile, registers a
merchant and mints user tokens with the backend's own commands, then per run creates a
deal and fires claims from --concurrency HTTP/1.1 keep-alive connections (aiohttp, one
claim in flight on each), counting each claim's latency, then as many GET /healthz on the
same server as a baseline: the ratio of the two, run by run, shows what a claim costs beyond
HTTP and the framework, whatever else the machine is doing. Every claim issues a voucher
(stock and limit are large enough), so each one pays for the atomic decision, the outbox
write and the signature. Figures are medians over the runs, after one warm-up run; the load
generator shares this machine's cores with the server.

Profiles: embedded (SQLite gate and store) and scaled (Redis gate, SQLite store, or MongoDB
with --mongodb-uri); scaled is skipped with a note when Redis is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shopcardd_voucher.commandline import whole_number

DEFAULT_REDIS_URL = os.environ.get("SHOPCARDD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=["embedded", "scaled", "all"],
        default="all",
        help="which profile to measure (default all)",
    )
    parser.add_argument("--claims", type=whole_number(1), default=3000, help="claims per run (default 3000)")
    parser.add_argument("--users", type=whole_number(1), default=300, help="distinct users (default 300)")
    parser.add_argument(
        "--concurrency", type=whole_number(1), default=64, help="claims in flight (default 64)"
    )
    parser.add_argument(
        "--runs", type=whole_number(1), default=3, help="measured runs per profile (default 3)"
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis of the scaled profile")
    parser.add_argument("--mongodb-uri", default=None, help="MongoDB of the scaled profile (default SQLite)")


@dataclass
class Figures:
    claims_per_second: float
    p50_ms: float
    p99_ms: float
    issued: int


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _backend_exe() -> str:
    """The ``shopcardd-backend`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("shopcardd-backend"))


def backend_command(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([_backend_exe(), *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"shopcardd-backend {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Backend:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_backend(env: dict[str, str], log_path: Path, workers: int = 1) -> Iterator[Backend]:
    """``shopcardd-backend serve`` on a free port, once ``/readyz`` answers; stopped (SIGTERM) after."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [_backend_exe(), "serve", "--port", str(port), "--workers", str(workers)]
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


async def _fire(
    url: str, requests: list[tuple[str, str, dict[str, str]]], concurrency: int, expect: int
) -> tuple[float, list[float]]:
    """Send ``requests`` (method, path, headers) over ``concurrency`` keep-alive connections, one
    request in flight on each; the wall time and each request's latency. aiohttp, because the
    load generator shares two cores with the server and must cost far less than a claim."""
    import aiohttp

    pending = iter(requests)
    latencies: list[float] = []

    async def connection(session: aiohttp.ClientSession) -> None:
        for method, path, headers in pending:
            started = time.perf_counter()
            async with session.request(method, url + path, headers=headers) as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != expect:
                raise RuntimeError(f"{method} {path} answered {response.status}, expected {expect}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(connection(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def _figures(elapsed: float, latencies: list[float]) -> Figures:
    latencies.sort()
    return Figures(
        len(latencies) / elapsed,
        _percentile(latencies, 0.5) * 1e3,
        _percentile(latencies, 0.99) * 1e3,
        len(latencies),
    )


def _one_run(url: str, api_key: str, tokens: list[str], args: argparse.Namespace) -> tuple[Figures, Figures]:
    """One claim run and, on the same server and client, its baseline: ``GET /healthz``, the
    cost of HTTP and the framework alone."""
    import httpx

    body = {
        "title": "bench",
        "stock": args.claims,
        "per_user_limit": -(-args.claims // len(tokens)),  # every claim issues
        "voucher_ttl_seconds": 600,
    }
    response = httpx.post(f"{url}/v1/deals", json=body, headers={"X-API-Key": api_key}, timeout=30)
    response.raise_for_status()
    path = f"/v1/deals/{response.json()['deal_id']}/claims"
    claims = [
        ("POST", path, {"Authorization": f"Bearer {tokens[n % len(tokens)]}", "Idempotency-Key": f"k{n}"})
        for n in range(args.claims)
    ]
    health: list[tuple[str, str, dict[str, str]]] = [("GET", "/healthz", {})] * args.claims
    claimed = _figures(*asyncio.run(_fire(url, claims, args.concurrency, 201)))
    baseline = _figures(*asyncio.run(_fire(url, health, args.concurrency, 200)))
    return claimed, baseline


def _median(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(r.claims_per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        runs[0].issued,
    )


def _measure(
    profile: str, env: dict[str, str], folder: Path, args: argparse.Namespace
) -> tuple[Figures, Figures, float]:
    """Median claim figures, median baseline figures, and the median same-run ratio of the two."""
    from tqdm import tqdm

    api_key = backend_command(env, "merchant", "create", "--merchant", "bench").strip().splitlines()[-1]
    tokens = backend_command(env, "user-token", *(f"u{i}" for i in range(args.users))).split()
    runs: list[tuple[Figures, Figures]] = []
    started = time.perf_counter()
    with running_backend(env, folder / f"serve-{profile}.log") as backend:
        # disable=None: no bar, and no carriage returns, when stderr is not a terminal (a log).
        for _ in tqdm(range(args.runs + 1), desc=profile, unit="run", leave=False, disable=None):
            runs.append(_one_run(backend.url, api_key, tokens, args))
    print(f"{profile}: {len(runs)} runs done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    measured = runs[1:]  # the first run warms caches and connections
    ratio = statistics.median(c.claims_per_second / b.claims_per_second for c, b in measured)
    return _median([c for c, _ in measured]), _median([b for _, b in measured]), ratio


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def run(args: argparse.Namespace) -> int:
    profiles = ["embedded", "scaled"] if args.profile == "all" else [args.profile]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    rows: list[tuple[str, tuple[Figures, Figures, float]]] = []
    with tempfile.TemporaryDirectory(prefix="shopcardd-bench-") as tmp:
        folder = Path(tmp)
        for profile in profiles:
            env = {**base, "SHOPCARDD_DATA_DIR": str(folder / profile)}
            if profile == "scaled":
                if not _redis_reachable(args.redis_url):
                    print(f"scaled: skipped, Redis is not reachable at {args.redis_url}", file=sys.stderr)
                    continue
                env["SHOPCARDD_REDIS_URL"] = args.redis_url
                env["SHOPCARDD_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"
                if args.mongodb_uri:
                    env["SHOPCARDD_MONGODB_URI"] = args.mongodb_uri
                    env["SHOPCARDD_MONGODB_DATABASE"] = f"bench_{uuid.uuid4().hex[:8]}"
            try:
                rows.append((profile, _measure(profile, env, folder, args)))
            finally:
                if profile == "scaled":
                    _cleanup_redis(args.redis_url, env["SHOPCARDD_REDIS_PREFIX"])
    store = "MongoDB" if args.mongodb_uri else "SQLite"
    print(f"claim API, one server process; {args.claims} claims per run, {args.users} users,")
    print(f"{args.concurrency} in flight; median of {args.runs} runs (after 1 warm-up)")
    print(f"{'profile':<34} {'claims/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'/healthz/s':>11} {'ratio':>6}")
    for profile, (claimed, baseline, ratio) in rows:
        name = "embedded (SQLite)" if profile == "embedded" else f"scaled (Redis gate, {store} store)"
        print(
            f"{name:<34} {claimed.claims_per_second:>9.0f} {claimed.p50_ms:>8.1f} {claimed.p99_ms:>8.1f} "
            f"{baseline.claims_per_second:>11.0f} {ratio:>6.2f}"
        )
    print("ratio: claims/s over GET /healthz/s in the same run (the share of bare HTTP + FastAPI speed)")
    return 0 if rows else 1


def _cleanup_redis(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
