"""``shopcardd-bench claims`` logs a summary line and no carriage-return clutter when its output
is not a terminal, on a Redis Cluster of its own (on one Redis: test_claims_traffic.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import BENCH


@pytest.mark.redis
@pytest.mark.slow
def test_the_claims_bench_logs_a_summary_without_carriage_returns_on_a_redis_cluster(tmp_path: Path) -> None:
    """On one Redis, test_claims_traffic.py's run asserts the same of its own output."""
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the claims bench needs wrk and redis-server (.ci/run installs wrk)")
        pytest.skip("the claims bench needs wrk and redis-server")
    argv = [str(BENCH), "claims", "--users", "20", "--duration", "1", "--runs", "1", "--workers", "1"]
    argv += ["--connections", "4", "--warm-passes", "1", "--sellout-stock", "5"]
    argv += ["--plot", str(tmp_path / "p.png"), "--redis-cluster", "3"]
    # Bytes, not text: universal newlines would turn the carriage returns into line feeds.
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr + proc.stdout
    assert b"same-run ratio of API CPU per claim" in proc.stdout
    assert b"5xx answers 0; nothing oversold, nobody over the limit" in proc.stdout
    assert b"sell-out: stock 5," in proc.stdout and b" 5 issued" in proc.stdout
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
