"""`shopcardd-bench voucher` prints a row of figures per algorithm (it asserts nothing itself)."""

from __future__ import annotations

from shopcardd_voucher import ALGORITHMS

from .conftest import bench


def test_voucher_bench_prints_a_row_per_algorithm() -> None:
    result = bench("voucher", "--runs", "1", "--count", "5")
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for alg in ALGORITHMS:
        assert alg in rows, result.stdout
        sign_rate, verify_rate = (float(v.replace(",", "")) for v in rows[alg][1:3])
        assert sign_rate > 0 and verify_rate > 0
    assert rows["EdDSA"][-1] == "12" and int(rows["EdDSA"][-2]) <= 300  # QR version, characters


def test_voucher_bench_refuses_figures_it_cannot_measure() -> None:
    for args in (["--runs", "0"], ["--count", "0"], ["--id-length", "65"]):
        result = bench("voucher", *args, expect=2)
        assert "must be" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
