"""``shopcardd-bench pipeline --rates``: a sale at each claim rate through every stage, the lag
of each, its plot and the store's checks (figures are not asserted: benchmarks are not tests)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import bench

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.rabbitmq]


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl (a vhost of its own)")
def test_the_sweep_prints_the_lag_of_each_rate_plots_it_and_stores_every_voucher_once(tmp_path: Path) -> None:
    plot = tmp_path / "lag.png"
    result = bench("pipeline", "--rates", "100,300", "--seconds", "2", "--plot", plot, timeout=300)
    out = result.stdout
    assert "\r" not in out + result.stderr, "a log, not a terminal's redrawn bar"
    assert "| claims/s asked | made | lag p50 s | p99 s |" in out
    lags, _, cpu = out.partition("CPU us per claim")
    rows = [line for line in lags.splitlines() if re.match(r"\| \d", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["100", "300"], out
    # Every stage's CPU per claim, the servers' too (all of them run on this machine here):
    stages = "claims | relay | persist | notify | analytics | Redis | RabbitMQ | store"
    assert f"| claims/s asked | {stages} | all |" in cpu, out
    for row in (line for line in cpu.splitlines() if re.match(r"\| \d", line)):
        cells = [cell.strip().replace(",", "") for cell in row.strip("|").split("|")]
        each = dict(zip(stages.split(" | "), (float(cell) for cell in cells[1:9]), strict=True))
        # The voucher's path costs CPU at every stage; notify (no contacts here) and analytics (no
        # refusals here) may use less than /proc's 10 ms tick in a 2 s sale.
        voucher_path = ("claims", "relay", "persist", "Redis", "RabbitMQ", "store")
        assert all(each[name] > 0 for name in voucher_path) and min(each.values()) >= 0, row
        assert abs(float(cells[9]) - sum(each.values())) <= 4, row  # rounding
    assert re.search(r"sale at 300/s: lag p99 [\d.]+ s, all stored [\d.]+ s after", out), out
    # 100 and 300 claims/s for 2 s, and the warm-up's second at the first rate:
    assert "all 900 vouchers stored exactly once; the stats count them all; nothing parked" in out, out
    assert plot.read_bytes().startswith(b"\x89PNG")
