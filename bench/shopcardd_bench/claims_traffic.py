"""The claims bench's traffic: a wrk run of claims.lua and what it answered, the probe that
claims beside it for the latency over time, and a deal to claim.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

BARE_PATH = "/bench/bare/deals/{deal}/claims"
CLAIM_PATH = "/v1/deals/{deal}/claims"


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


def run_wrk(
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


def create_deal(url: str, api_key: str, stock: int, limit: int) -> str:
    import httpx

    body = {"title": "bench", "stock": stock, "per_user_limit": limit, "voucher_ttl_seconds": 3600}
    response = httpx.post(f"{url}/v1/deals", json=body, headers={"X-API-Key": api_key}, timeout=30)
    response.raise_for_status()
    return str(response.json()["deal_id"])
