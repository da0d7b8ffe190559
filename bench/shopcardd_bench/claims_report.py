"""What the claims bench prints and draws: the table of the measured runs (medians, same-run
ratios, answers) and the PNG of throughput and probe latency over the run.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from .claims_measure import KINDS, Measured
from .claims_traffic import Probe


def print_table(
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


def write_plot(path: Path, measured: list[Measured], probe: Probe) -> None:
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
