"""``shopcardd-bench device``, ``sync`` and ``lan`` print their tables."""

from __future__ import annotations

import pytest

from .conftest import bench

# Each drives a benchmark end to end (4-10 s): in make test, not in the edit loop (make check).
pytestmark = pytest.mark.slow


def test_the_device_benchmark_prints_a_table() -> None:
    args = ("--runs", "1", "--frames", "3", "--decoder", "zxing", "--size", "640x480")
    result = bench("device", *args, timeout=120)
    header, row = result.stdout.splitlines()[2], result.stdout.splitlines()[4]
    stages = ["decode", "verify", "record", "total", "empty"]
    assert header.split() == ["decoder", "frame", "read", *stages, "scans/s"]
    cells = row.split()
    assert cells[:2] == ["zxing", "640x480"]
    for cell in cells[3:8]:  # each stage as median/p95, and the p95 is never below the median
        median, p95 = map(float, cell.split("/"))
        assert 0 < median <= p95


def test_the_sync_benchmark_prints_a_table() -> None:
    result = bench("sync", "--redemptions", "300", "--runs", "1", "--batch-size", "100")
    header, row = result.stdout.splitlines()[1:3]
    assert header.split() == ["redemptions", "batch", "requests", "seconds", "redemptions/s"]
    redemptions, batch, requests, seconds, rate = row.split()
    assert (redemptions, batch, requests) == ("300", "100", "3") and float(seconds) > 0 < float(rate)


def test_the_lan_benchmark_prints_the_gossip_delay_and_the_scan_loop_with_gossip_on_and_off() -> None:
    result = bench("lan", "--vouchers", "5", "--runs", "1", "--frames", "3")
    lines = result.stdout.splitlines()
    p50, p99, longest = map(float, lines[2].split())
    assert 0 < p50 <= p99 <= longest
    rows = {line.split()[0]: line.split()[1:3] for line in lines[6:9]}
    assert list(rows) == ["off", "on", "flood"]
    assert all(float(median) > 0 and frames == "3" for median, frames in rows.values())
    assert [line.split()[:2] for line in lines[9:11]] == [["ratio", "on/off"], ["ratio", "flood/off"]]
    assert all(float(line.split()[2]) > 0 for line in lines[9:11])
