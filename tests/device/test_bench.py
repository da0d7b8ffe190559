"""``shopcardd-bench device`` prints its table (figures are not asserted: benchmarks are not tests)."""

from __future__ import annotations

import subprocess

from .conftest import BIN


def test_the_device_benchmark_prints_a_table() -> None:
    result = subprocess.run(
        [
            str(BIN / "shopcardd-bench"),
            "device",
            "--runs",
            "1",
            "--frames",
            "3",
            "--decoder",
            "zxing",
            "--size",
            "640x480",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[2], result.stdout.splitlines()[4]
    stages = ["decode", "verify", "record", "total", "empty"]
    assert header.split() == ["decoder", "frame", "read", *stages, "scans/s"]
    cells = row.split()
    assert cells[:2] == ["zxing", "640x480"]
    for cell in cells[3:8]:  # each stage as median/p95, and the p95 is never below the median
        median, p95 = map(float, cell.split("/"))
        assert 0 < median <= p95
