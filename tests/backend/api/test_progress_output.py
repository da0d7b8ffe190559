"""Progress bars belong on a terminal: logged output (``make demo > log``) gets a summary line
and no carriage-return clutter (the claims bench's own: tests/bench/test_claims.py)."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import httpx
import pytest

from shopcardd_bench.served import running_backend

from .conftest import backend

ROOT = Path(__file__).resolve().parents[3]


def test_the_demo_flood_logs_a_summary_without_carriage_returns(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    demo_backend = importlib.import_module("demo_backend")
    api_key = backend(env, "merchant", "create", "--merchant", "cafe").stdout.split()[-1]
    users = ["u1", "u2"]
    with running_backend(env, tmp_path / "serve.log") as server:
        tokens = dict(zip(users, backend(env, "user-token", *users).stdout.split(), strict=True))
        body = {"title": "tea", "stock": 3, "per_user_limit": 2, "voucher_ttl_seconds": 600}
        deal = httpx.post(f"{server.url}/v1/deals", json=body, headers={"X-API-Key": api_key}).json()
        capsys.readouterr()
        demo = demo_backend.Demo(out=tmp_path, color=False)
        answers = asyncio.run(demo_backend._flood(demo, server.url, deal["deal_id"], tokens))
    printed = capsys.readouterr()
    assert sum(status == 201 for _, _, status, _ in answers) == 3
    assert "\r" not in printed.err + printed.out
    assert f"{len(answers)} claims answered in" in printed.out
