"""The claims bench's measure: one wrk run of a kind (cold, warm, bare) on a deal of its own with
the CPU it cost the API and Redis, the run through nginx, and the checks of every deal after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .claims_traffic import BARE_PATH, CLAIM_PATH, Probe, WrkResult, create_deal, run_wrk
from .processes import total_cpu_seconds
from .served import backend_command
from .services import free_port

BIG_STOCK, BIG_LIMIT = 10_000_000, 1_000
"""Stock and per-user limit of a measured deal (the API's largest): every claim issues."""


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


MINTED_PER_COMMAND = 20_000
"""Users per ``user-token`` command: a cold run at 7,000 claims/s needs 95,000 new tokens, more
user ids than one command line holds."""
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
        chunks = (users[i : i + MINTED_PER_COMMAND] for i in range(0, count, MINTED_PER_COMMAND))
        path.write_text("".join(backend_command(self.env, "user-token", *chunk) for chunk in chunks))
        return path

    def measure(self, kind: str, through: str | None = None, rate: float = 0) -> Measured:
        """One wrk run of ``kind`` on a deal of its own; ``through``: another URL in front of
        the API (nginx), and ``rate``, claims/s on a schedule there."""
        cold = (self.new_tokens(), self.args.cold_share) if kind == "cold" else None
        deal = create_deal(self.url, self.api_key, BIG_STOCK, BIG_LIMIT)
        path = (BARE_PATH if kind == "bare" else CLAIM_PATH).format(deal=deal)
        url, pids = (self.bare_url, self.bare_pids) if kind == "bare" else (self.url, self.api_pids)
        url = through or url
        if kind == "cold":
            self.probe.start(deal)
        api0, redis0, started = total_cpu_seconds(pids), self.redis_cpu(), time.time()
        try:
            duration = self.args.duration
            result = run_wrk(url, path, self.tokens, self.args, "claim", duration, cold=cold, rate=rate)
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


def check_deals(session: Session, limits: dict[str, int], stocks: dict[str, int]) -> list[str]:
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


def measure_through_nginx(session: Session, api_port: int, folder: Path, cold_rate: float) -> list[Measured]:
    """Cold claims through nginx with the repository's site (both upstream servers pointing at
    the API's port): first as fast as they go, the highest rate the API sustains behind nginx
    (nginx's own work shares the cores), then at 80 % of that rate, on a schedule: the latency
    a customer sees at that load, run by run and the median."""
    from .nginx import running_nginx

    runs: list[Measured] = []
    port = free_port()
    with running_nginx(folder / "nginx", [api_port, api_port], port):
        through = f"http://127.0.0.1:{port}"
        sustained = session.measure("cold", through=through).claims_per_second
        rate = 0.8 * sustained
        full_speed = f"{sustained:,.0f} cold claims/s at full speed ({cold_rate:,.0f}/s direct)"
        print(f"nginx: {full_speed}", file=sys.stderr)
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
        f"through nginx (the repository's site), cold, at 80 % of the {sustained:,.0f} claims/s it "
        f"sustains behind nginx ({cold_rate:,.0f}/s direct): asked "
        f"{rate:,.0f}/s, got {done:,.0f}/s; p50 {p[50]:.1f} ms, p95 {p[95]:.1f} ms, p99 {p[99]:.1f} ms "
        f"(median of {len(runs)} runs: p99 {', '.join(f'{m.wrk.latency_us[99] / 1e3:.1f}' for m in runs)}); "
        + ", ".join(f"{status}: {n:,}" for status, n in sorted(outcomes.items()))
    )
    return runs
