"""`shopcardd-bench rehearsal`, short: the production topology on loopback, a 20 s sale through it
with every fault of the schedule, and every invariant checked; and Ctrl-C in the middle of it.

Slow (kept in CI): one run takes two to three minutes on a 2-core machine. The full one, at its
defaults, is the bench itself (docs/production.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import ctrl_c_reaches_it, service_missing, yields_to_the_suite

pytestmark = pytest.mark.slow

BENCH = str(Path(sys.executable).with_name("shopcardd-bench"))
FAULTS = [
    "SIGKILL Redis primary",
    "a voucher redeemed at till-a brought to till-b",
    "SIGKILL API process 1",
    "started API process 1 again",
    "cut till-c off",
    "SIGKILL relay 1",
    "SIGKILL persist worker",
    "redeemed 2 vouchers at till-c (cut off) and at till-a",
    "stop RabbitMQ node",
    "till-c back on",
]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The rehearsal's temporary folder (TMPDIR): outside pytest's 0700 folders, since the
    broker runs as the rabbitmq user; every process the run starts names a path under it."""
    for tool, package in [("redis-server", "redis-server"), ("rabbitmq-server", "rabbitmq-server")]:
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            service_missing(f"{tool} is not installed (apt-get install {package})")
    if shutil.which("nginx", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")) is None:
        service_missing("nginx is not installed (apt-get install nginx-light; make test does as root)")
    folder = Path(tempfile.mkdtemp(prefix="shopcardd-test-rehearsal-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _left_running(folder: Path) -> list[str]:
    """Processes whose command line or environment names ``folder``: what a run left behind."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in seen:
            left.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:120]!r}")
    return left


def _rehearsal(scratch: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.Popen(
        [BENCH, "rehearsal", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_the_suite,
    )


def _as_in_the_suite() -> None:
    ctrl_c_reaches_it()
    yields_to_the_suite()


def test_a_short_rehearsal_runs_every_fault_and_loses_nothing(scratch: Path) -> None:
    report = scratch / "report"
    run = _rehearsal(scratch, "--seconds", "20", "--in-flight", "8", "--report", str(report))
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, out[-4000:] + err[-3000:]
    for fault in FAULTS:
        assert fault in out, f"{fault!r} did not happen:\n{out[-4000:]}"
    summary = re.search(r"^(\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert summary and summary.group(2) == "0" and int(summary.group(1)) >= 15, out[-3000:]
    assert "conflicts: 2 at the backend, 2 made on purpose, the same: True" in out
    assert "refused there as already_redeemed" in out  # the shop LAN told the next till
    assert "0 failed" in (report / "report.md").read_text()
    assert (report / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _left_running(scratch) == []


def test_ctrl_c_stops_everything_it_started_with_exit_130(scratch: Path) -> None:
    run = _rehearsal(scratch, "--seconds", "60", "--report", str(scratch / "report"))
    assert run.stdout is not None
    for line in run.stdout:  # everything is up once the schedule is printed
        if line.startswith("fault schedule:"):
            break
    else:
        pytest.fail(f"the rehearsal never started its sale: {run.stderr.read() if run.stderr else ''}")
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=180)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    assert _left_running(scratch) == []
