"""What ``shopcardd-bench pipeline --rates`` prints and plots: the lag of each sale against its rate."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from .figures import percentile
from .pipeline_cpu import STAGES, ceiling, per_claim_us

LAG_BUDGET_SECONDS = 5.0
"""The goal: a voucher is stored within 5 s of its claim's answer, at the 99th percentile."""


@dataclass
class SaleLag:
    """One sale of the sweep: the rate asked and made, each claim's lag, and the CPU it took."""

    rate: int
    made: float
    """Claims/s made: below ``rate`` when the claiming threads could not keep up."""
    lags: list[float]
    """Seconds from each claim's answer to its voucher stored."""
    drained: float
    """Seconds from the sale's last claim until every voucher of it was stored."""
    cpu: dict[str, float]
    """CPU seconds each stage took for the sale (``pipeline_cpu.STAGES``, those read here)."""
    claims: int

    def lag(self, fraction: float) -> float:
        return percentile(self.lags, fraction)


def print_sales(sales: list[SaleLag], args: argparse.Namespace) -> None:
    print(f"\nsales of {args.seconds} s, every stage running ({args.threads} claiming threads)")
    print(
        "| claims/s asked | made | lag p50 s | p99 s | max s | stored after the sale, s "
        "| relay events per CPU s | persist documents per CPU s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sale in sales:
        relay = sale.claims / sale.cpu["relay"] if sale.cpu["relay"] else float("nan")
        persist = sale.claims / sale.cpu["persist"] if sale.cpu["persist"] else float("nan")
        print(
            f"| {sale.rate:,} | {sale.made:,.0f} | {sale.lag(0.5):.2f} | {sale.lag(0.99):.2f} "
            f"| {sale.lag(1.0):.2f} | {sale.drained:.1f} | {relay:,.0f} | {persist:,.0f} |"
        )
    print_cpu(sales)
    kept = [sale.rate for sale in sales if sale.lag(0.99) <= LAG_BUDGET_SECONDS]
    if kept:
        print(f"highest rate with the lag's p99 within {LAG_BUDGET_SECONDS:g} s: {max(kept):,} claims/s")
    else:
        print(f"no rate kept the lag's p99 within {LAG_BUDGET_SECONDS:g} s")


def print_cpu(sales: list[SaleLag]) -> None:
    """Each stage's CPU per claim, and the claims/s all of them together could carry here."""
    columns = [name for name in STAGES if name in sales[0].cpu]
    print(
        f"\nCPU us per claim, each stage (its process's CPU over the sale until every queue was empty; "
        f"{os.cpu_count()} cores)"
    )
    print(f"| claims/s asked | {' | '.join(columns)} | all | claims/s all stages could carry |")
    print("| ---: |" + " ---: |" * (len(columns) + 2))
    for sale in sales:
        figures = per_claim_us(sale.cpu, sale.claims)
        row = " | ".join(f"{figures[name]:,.0f}" for name in columns)
        print(f"| {sale.rate:,} | {row} | {figures['all']:,.0f} | {ceiling(figures['all']):,.0f} |")
    missing = [name for name in STAGES if name not in sales[0].cpu]
    if missing:
        print(f"(not on this machine, not counted: {', '.join(missing)})")


def write_lag_plot(path: Path, sales: list[SaleLag]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 5))
    asked = [sale.rate for sale in sales]
    for fraction, label, style in ((0.5, "p50", "o-"), (0.99, "p99", "s-"), (1.0, "max", "^:")):
        axis.plot(asked, [sale.lag(fraction) for sale in sales], style, label=f"lag {label}")
    for sale in sales:  # a sale the claiming threads could not keep at its rate says what it made
        if sale.made < 0.98 * sale.rate:
            axis.annotate(
                f"made {sale.made:,.0f}/s",
                (sale.rate, sale.lag(0.99)),
                textcoords="offset points",
                xytext=(-60, 8),
            )
    axis.axhline(
        LAG_BUDGET_SECONDS, color="tab:red", linestyle="--", label=f"{LAG_BUDGET_SECONDS:g} s goal (p99)"
    )
    axis.set_xlabel("claims/s asked of the sale (on a schedule)")
    axis.set_ylabel("claim answered -> voucher stored, s")
    axis.set_yscale("log")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
