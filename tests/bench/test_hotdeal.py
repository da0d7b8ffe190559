"""``shopcardd-bench hotdeal`` starts its own Redis Cluster, prints its table and its checks
(figures are not asserted: benchmarks are not tests)."""

from __future__ import annotations

import shutil

import pytest

from .conftest import bench


@pytest.mark.redis  # a Redis Cluster of its own: redis-server
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server and redis-cli")
def test_the_hotdeal_benchmark_prints_a_row_per_bucket_count_and_its_checks() -> None:
    # One claiming task: the sell-out check then sees no race between the sweeps of two claims
    # (with many, a claim can be answered sold_out while units move between buckets: see
    # docs/backend-storage.md, "Buckets").
    argv = ["hotdeal", "--seconds", "1", "--runs", "1", "--tasks", "1", "--check-stock", "40"]
    result = bench(*argv, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "buckets",
        "claims/s",
        *["primary", "1", "us", "primary", "2", "us"],
        *["primary", "3", "us", "busiest", "share"],
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert list(rows) == ["1", "3"]
    assert all(float(cells[0].replace(",", "")) > 0 and cells[-1].endswith("%") for cells in rows.values())
    assert [line for line in lines if line.startswith("sell-out check")] == [
        f"sell-out check, {n} bucket(s): stock 40, 60 users claiming one each: "
        "exactly the stock issued, then only sold_out, the outbox exact"
        for n in (1, 3)
    ]
    assert lines[-1] == "checks: all passed"
    assert result.stderr.count(" run 1/1: ") == 2  # a progress line per run
