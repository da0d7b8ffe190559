"""The walls between the parts, as a newcomer would trip over them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

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
