"""Progress bars belong on a terminal: logged output (``make demo > log``) gets a summary line
and no carriage-return clutter."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shopcardd_bench.claims import running_backend

from .conftest import backend

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.redis
@pytest.mark.parametrize(
    "redis",
    [
        pytest.param([], id="one-redis"),
        pytest.param(["--redis-cluster", "3"], id="cluster", marks=pytest.mark.slow),
    ],
)
def test_the_claims_bench_logs_a_summary_without_carriage_returns(tmp_path: Path, redis: list[str]) -> None:
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the claims bench needs wrk and redis-server (.ci/run installs wrk)")
        pytest.skip("the claims bench needs wrk and redis-server")
    bench = str(Path(sys.executable).with_name("shopcardd-bench"))
    argv = [bench, "claims", "--users", "20", "--duration", "1", "--runs", "1", "--workers", "1"]
    argv += ["--connections", "4", "--warm-passes", "1", "--sellout-stock", "5"]
    argv += ["--plot", str(tmp_path / "p.png"), *redis]
    # Bytes, not text: universal newlines would turn the carriage returns into line feeds.
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr + proc.stdout
    assert b"same-run ratio of API CPU per claim" in proc.stdout
    assert b"5xx answers 0; nothing oversold, nobody over the limit" in proc.stdout
    assert b"sell-out: stock 5," in proc.stdout and b" 5 issued" in proc.stdout
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_the_demo_flood_logs_a_summary_without_carriage_returns(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    demo_backend = importlib.import_module("demo_backend")
    api_key = backend(env, "merchant", "create", "--merchant", "cafe").stdout.split()[-1]
    users = ["u1", "u2"]
    tokens = dict(zip(users, backend(env, "user-token", *users).stdout.split(), strict=True))
    with running_backend(env, tmp_path / "serve.log") as server:
        body = {"title": "tea", "stock": 3, "per_user_limit": 2, "voucher_ttl_seconds": 600}
        deal = httpx.post(f"{server.url}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()
        capsys.readouterr()
        demo = demo_backend.Demo(out=tmp_path, color=False)
        answers = asyncio.run(demo_backend._flood(demo, server.url, deal["deal_id"], tokens))
    printed = capsys.readouterr()
    assert sum(status == 201 for _, _, status, _ in answers) == 3
    assert "\r" not in printed.err + printed.out
    assert f"{len(answers)} claims answered in" in printed.out
