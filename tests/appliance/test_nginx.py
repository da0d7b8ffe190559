"""nginx, with the repository's site, in front of two claim API processes on loopback.

One API process is killed (SIGKILL) in the middle of a stream of claims. Every claim answered
201 must still be known afterwards (the same user and Idempotency-Key return the same voucher),
no more vouchers exist than were answered, and the customers whose request was cut off get an
answer all the same: nginx sends a claim that a dying process dropped to the other one, which is
safe only because a claim is idempotent by its key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from servers import free_port
from shopcardd_bench.nginx import nginx_conf, site_for
from shopcardd_bench.sync import enrol_counter, fill_ledger
from shopcardd_device.config import DeviceConfig
from shopcardd_device.ledger import Ledger
from shopcardd_provision.tls import make_tls

from .conftest import BIN, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.nginx]

USERS, CLAIMS_PER_USER, IN_FLIGHT = 40, 5, 8
KILL_AFTER = 60  # answers before one API process dies


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not come up: {log.read_text()[-3000:]}")


@dataclass
class Stack:
    url: str
    apis: list[subprocess.Popen[bytes]]
    env: dict[str, str]
    https_url: str
    ca: Path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    nginx = require_tool("nginx", "nginx-light")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    env["SHOPCARDD_DATA_DIR"] = str(tmp_path / "data")
    env["SHOPCARDD_DEVICE_AUDIENCE"] = f"http://127.0.0.1:{port}"  # what counters sign for, behind nginx
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api_ports = [free_port(), free_port()]
        for api_port in api_ports:
            log = tmp_path / f"api-{api_port}.log"
            with log.open("wb") as out:
                cmd = [
                    str(BIN / "shopcardd-backend"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                ]
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            wait_until_up(f"http://127.0.0.1:{api_port}/healthz", procs[-1], log)
        https_port = free_port()
        tls = make_tls(tmp_path / "tls", ["localhost"])
        (tmp_path / "site.conf").write_text(site_for(api_ports, port, https_port, tmp_path / "tls"))
        (tmp_path / "nginx.conf").write_text(nginx_conf(tmp_path))
        checked = subprocess.run(
            [nginx, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr
        log = tmp_path / "error.log"
        procs.append(subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.DEVNULL))
        wait_until_up(f"http://127.0.0.1:{port}/healthz", procs[-1], log)
        yield Stack(f"http://127.0.0.1:{port}", procs[:2], env, f"https://localhost:{https_port}", tls.ca)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def backend(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "shopcardd-backend"), *args], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass(frozen=True)
class Claim:
    user: int
    key: str
    status: int
    voucher_id: str | None


def test_killing_one_api_process_mid_run_loses_no_claim_answered_201(stack: Stack) -> None:
    api_key = backend(stack, "merchant", "create", "--merchant", "m-nginx").splitlines()[-1].strip()
    tokens = backend(stack, "user-token", *[f"u{n}" for n in range(USERS)]).split()
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        created = client.post(
            "/v1/deals",
            headers={"X-API-Key": api_key},
            json={
                "title": "Flash",
                "stock": 10_000,
                "per_user_limit": CLAIMS_PER_USER,
                "voucher_ttl_seconds": 3600,
            },
        )
        assert created.status_code == 201, created.text
        deal = created.json()["deal_id"]

        def claim(user: int, key: str) -> Claim:
            answer = client.post(
                f"/v1/deals/{deal}/claims",
                headers={"Authorization": f"Bearer {tokens[user]}", "Idempotency-Key": key},
            )
            voucher = answer.json().get("voucher_id") if answer.status_code in (200, 201) else None
            return Claim(user, key, answer.status_code, voucher)

        work = [(user, f"k-{user}-{n}") for n in range(CLAIMS_PER_USER) for user in range(USERS)]
        answered: list[Claim] = []
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            for result in pool.map(lambda item: claim(*item), work):
                answered.append(result)
                if len(answered) == KILL_AFTER:
                    os.kill(stack.apis[0].pid, signal.SIGKILL)
        assert stack.apis[0].wait(10) == -signal.SIGKILL  # it really died mid-run, not after
        statuses = {c.status for c in answered}
        assert statuses <= {200, 201}, [c for c in answered if c.status not in (200, 201)][:5]

        won = [c for c in answered if c.status == 201]
        # Every voucher answered 201 is still there: the same claim again returns it (200).
        for c in won:
            again = claim(c.user, c.key)
            assert (again.status, again.voucher_id) == (200, c.voucher_id), c
        vouchers = {c.voucher_id for c in answered}
        left = client.get(f"/v1/deals/{deal}").json()["stock_left"]
        assert 10_000 - left == len(vouchers) == len(work)  # no voucher lost, none made twice


def test_a_counter_syncs_600_redemptions_in_its_largest_batches_through_the_shipped_site(
    stack: Stack, tmp_path: Path
) -> None:
    """The site's body limits are the API's, location by location: a counter's sync takes the
    device's largest batch (500 redemptions, about 90 KB) without one 413; other bodies stay small."""
    merchant = "m-nginx-sync"
    api_key = backend(stack, "merchant", "create", "--merchant", merchant).splitlines()[-1].strip()
    toml = enrol_counter(stack.url, api_key, "till-1", tmp_path / "counter", merchant)  # through nginx
    toml.write_text(toml.read_text() + "\n[sync]\nbatch_size = 500\n")
    config = DeviceConfig.load(toml)
    ids = fill_ledger(
        config.ledger_path,
        600,
        merchant=merchant,
        deal="d-espresso",
        now=time.time(),
        device_id=config.device_id,
    )

    done = subprocess.run(
        [str(BIN / "shopcardd-device"), "sync", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "synced with" in done.stdout and "600 redemptions up, " in done.stdout, done.stdout
    assert "sync_batch_halved" not in done.stderr, done.stderr
    syncs = [
        line for line in (tmp_path / "access.log").read_text().splitlines() if "/v1/devices/sync" in line
    ]
    assert len(syncs) == 2 and all('" 200 ' in line for line in syncs), syncs  # 500, then 100
    with Ledger(config.ledger_path, read_only=True) as ledger:
        assert ledger.unsynced_count() == 0 and ledger.sync_failure is None
        confirmed = {r.voucher_id: r.backend_status for r in ledger.redemptions()}
    assert confirmed == dict.fromkeys(ids, "ok")

    with httpx.Client(base_url=stack.url, timeout=30) as client:
        # Past the API's own limits nginx refuses first (its HTML page, not the API's problem
        # document): 256 KiB on the sync, 16 KiB on everything else.
        too_large = client.post("/v1/devices/sync", content=b"x" * (256 * 1024 + 1))
        assert too_large.status_code == 413 and "text/html" in too_large.headers["content-type"]
        within = client.post("/v1/devices/sync", content=b"x" * (256 * 1024))  # reaches the API
        assert within.status_code == 401 and within.headers["content-type"] == "application/problem+json"
        deal = client.post("/v1/deals", headers={"X-API-Key": api_key}, content=b"x" * (16 * 1024 + 1))
        assert deal.status_code == 413 and "text/html" in deal.headers["content-type"]


def test_the_site_answers_over_https_with_http2_on_a_provisioned_certificate(stack: Stack) -> None:
    """The site's TLS lines, with `shopcardd-provision tls`'s files: a client that trusts ca.pem
    gets the API over HTTP/2, one that does not refuses the server."""
    with httpx.Client(http2=True, verify=str(stack.ca), timeout=30) as client:
        answer = client.get(f"{stack.https_url}/.well-known/jwks.json")
    assert (answer.status_code, answer.http_version) == (200, "HTTP/2")
    assert answer.json()["keys"]
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{stack.https_url}/healthz", timeout=30)
