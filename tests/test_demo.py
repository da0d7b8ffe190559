"""`make demo` is the first thing a newcomer runs: it must keep working end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path / "demo"), "--no-color"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ok: genuine voucher -> accepted" in result.stdout
    assert "-> bad_signature" in result.stdout
    assert (tmp_path / "demo" / "voucher.png").stat().st_size > 0
    assert "Demo finished" in result.stdout
