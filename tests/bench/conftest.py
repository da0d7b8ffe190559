"""The bench tests: each ``shopcardd-bench`` command runs as an operator runs it and prints its
table. Their figures are not asserted (benchmarks are commands that print figures, not timed
tests), so these tests stay apart from the behaviour suites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(sys.executable).with_name("shopcardd-bench")


def bench(*args: str | Path, timeout: float = 180, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """``shopcardd-bench ARGS``, checked to exit ``expect`` (its output shown when it does not)."""
    result = subprocess.run([str(BENCH), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result
