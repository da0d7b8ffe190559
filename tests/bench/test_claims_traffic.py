"""``shopcardd-bench claims`` with tiny sizes: cold, warm and bare rows side by side, the cold
claims bringing new tokens, the run through nginx, the sell-out, its checks, and a log without
carriage returns when its output is not a terminal (figures are not asserted: benchmarks are
not tests)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(sys.executable).with_name("shopcardd-bench")
TOOLS = ("wrk", "redis-server", "rabbitmqctl", "nginx")

pytestmark = pytest.mark.slow  # about two minutes: a server pair, nine wrk runs, nginx


@pytest.mark.skipif(
    any(shutil.which(tool, path="/usr/bin:/usr/sbin:/usr/local/bin") is None for tool in TOOLS),
    reason=f"needs {', '.join(TOOLS)}",
)
def test_the_claims_benchmark_measures_cold_and_warm_claims_against_the_bare_endpoint(
    tmp_path: Path,
) -> None:
    argv = [str(BENCH), "claims", "--users", "50", "--duration", "1", "--runs", "1", "--connections", "4"]
    argv += ["--sellout-stock", "20", "--cold-share", "0.8", "--nginx", "--plot", str(tmp_path / "c.png")]
    # Bytes, not text: universal newlines would turn carriage returns into line feeds.
    result = subprocess.run(argv, capture_output=True, timeout=300)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    assert "\r" not in out + err  # its output is a log here, not a terminal's redrawn line
    rows = [line.split("  ")[0] for line in out.splitlines() if re.match(r"(claim route|bare)", line)]
    assert rows == ["claim route, cold", "claim route, warm", "bare FastAPI endpoint"]
    assert "claim route cold / bare endpoint: " in out and "claim route warm / bare endpoint: " in out
    share = re.search(r"answers \(claim route, cold, measured runs\): .*; (\d+)% with a new token", out)
    assert share is not None and 70 <= int(share[1]) <= 90, out
    assert re.search(r"through nginx .* at 80 % of .* p99 [\d.]+ ms", out), out
    assert "5xx answers 0; nothing oversold, nobody over the limit" in out
    assert "sell-out: stock 20," in out and " 20 issued" in out
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
