"""The fuzz runs as CI runs them: short, but the same commands an operator runs for hours."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import bench

# Fuzzing and schemathesis runs, 15-20 s each: in make test, not in the edit loop (make check).
pytestmark = pytest.mark.slow


def test_the_counter_and_voucher_fuzz_runs_find_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    done = bench("fuzz", "counter", "voucher", "--seconds", "4", "--artifacts", tmp_path, timeout=240)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[3:]}
    for target in ("counter", "voucher"):
        assert int(rows[target][1].replace(",", "")) > 0 and rows[target][-1] == "0"
    assert not list(tmp_path.iterdir()), "libFuzzer saved a crashing input"


def test_schemathesis_finds_no_5xx_and_no_schema_violation_on_any_route() -> None:
    pytest.importorskip("schemathesis")
    from shopcardd_bench.fuzz import run_schemathesis

    outcome = run_schemathesis(seconds=15)
    assert outcome.failures == []
    assert outcome.executions > 100
