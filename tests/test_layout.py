"""The walls between the parts, as a newcomer would trip over them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_voucher_package_loads_no_other_shopcardd_package() -> None:
    code = "import sys, shopcardd_voucher; print(sorted(m for m in sys.modules if m.startswith('shopcardd')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        loaded.strip() == "['shopcardd_voucher', 'shopcardd_voucher.keys', 'shopcardd_voucher.reasons', "
        "'shopcardd_voucher.voucher']"
    )


def test_a_counter_device_installs_none_of_the_backend_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    device_needs = " ".join(project["dependencies"] + project["optional-dependencies"]["device"]).lower()
    for backend_only in ("fastapi", "uvicorn", "redis", "pymongo", "pika"):
        assert backend_only not in device_needs


def test_every_command_explains_itself() -> None:
    bin_dir = Path(sys.executable).parent
    for command in ("shopcardd-device", "shopcardd-backend", "shopcardd-provision", "shopcardd-bench"):
        result = subprocess.run([bin_dir / command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout and len(result.stdout.splitlines()) > 3


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        (["shopcardd-device", "verify"], ["TOKEN"]),
        (["shopcardd-provision", "keygen"], ["--kid", "k1", "--out", "keys"]),
        (["shopcardd-backend", "user-token"], ["alice"]),
        (["shopcardd-backend", "merchant", "create"], ["--merchant", "m1"]),
        (["shopcardd-bench", "voucher"], []),
    ],
)
def test_a_misspelt_option_is_answered_with_the_usage_of_the_command_typed(
    command: list[str], arguments: list[str], tmp_path: Path
) -> None:
    program, *subcommand = command
    result = subprocess.run(
        [Path(sys.executable).parent / program, *subcommand, *arguments, "--jsn"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {' '.join(command)} "), result.stderr
    assert "unrecognized arguments: --jsn" in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


def test_a_benchmark_refuses_a_count_it_cannot_measure() -> None:
    bench = Path(sys.executable).parent / "shopcardd-bench"
    for benchmark, option in (("device", "--runs"), ("claims", "--concurrency"), ("voucher", "--count")):
        result = subprocess.run([bench, benchmark, option, "0"], capture_output=True, text=True)
        assert result.returncode == 2 and "must be 1 or more, not 0" in result.stderr, result.stderr
