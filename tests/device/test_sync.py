"""``shopcardd-device sync`` against a served backend: real HTTP on loopback, no mock of the backend.

One ``shopcardd-backend serve`` (embedded profile) for the module; each test registers a merchant
of its own, enrols its counters with ``shopcardd-provision enroll``'s code and signs vouchers
with the backend's own signing key (what a claim would give, without the claim).
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters

from logschema import log_entry
from servers import BodyLimitProxy, DroppingProxy
from shopcardd_backend.stores.sqlite import SqliteDocumentStore
from shopcardd_bench.served import backend_command, running_backend
from shopcardd_bench.sync import enrol_counter, fill_ledger
from shopcardd_device import cli
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.policy import ClockState
from shopcardd_device.sync import (
    BackendClient,
    Syncer,
    SyncFailed,
    load_device_key,
    load_trust_key,
    sync,
)
from shopcardd_provision.keys import keygen
from shopcardd_voucher import KeySet, Reason, SigningKey, issue
from shopcardd_voucher.trust import ANSWER_TYPE, sign_document
from shopcardd_voucher.voucher import parse_compact

from .conftest import BIN, device_command, start_device

DAY = 86_400.0
_numbers = itertools.count(1)


@dataclass(frozen=True)
class Served:
    url: str
    env: dict[str, str]
    data: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("backend")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    env["SHOPCARDD_DATA_DIR"] = str(folder / "data")
    with running_backend(env, folder / "serve.log") as backend:
        yield Served(backend.url, env, folder / "data")


class Clock:
    """The device's clock, settable by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unsynchronised() -> bool:
    """What a Pi says after an offline boot (and what this container's kernel says too)."""
    return False


@dataclass
class Shop:
    """One merchant of the served backend, with its API key, its counters and the signing key."""

    served: Served
    merchant: str
    api_key: str
    folder: Path

    @property
    def keys_dir(self) -> Path:
        return self.served.data / "keys"

    def signing_key(self, kid: str | None = None) -> SigningKey:
        kid = kid or KeySet.load(self.keys_dir / "jwks.json").kids[0]
        return SigningKey.load(kid, self.keys_dir / f"{kid}.private.pem")

    def enrol(self, name: str) -> DeviceConfig:
        device = f"{self.merchant}-{name}"
        return DeviceConfig.load(
            enrol_counter(self.served.url, self.api_key, device, self.folder / name, self.merchant)
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(
            method, self.served.url + path, json=body, headers={"X-API-Key": self.api_key}, timeout=30
        )
        assert response.status_code < 300, response.text
        return response.json()

    def deal(self) -> str:
        body = {"title": "Flat white", "stock": 100, "per_user_limit": 5, "voucher_ttl_seconds": 3600}
        return str(self.call("POST", "/v1/deals", body)["deal_id"])

    def voucher(self, deal: str, *, now: float | None = None, ttl: int = 3600, kid: str | None = None) -> str:
        return issue(self.signing_key(kid), deal=deal, merchant=self.merchant, user="u-ada", ttl=ttl, now=now)

    def claimed(self, deal: str) -> str:
        """A voucher the backend issued (a claim), which it knows and so lets the merchant revoke."""
        token = backend_command(self.served.env, "user-token", "u-ada").split()[-1]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": os.urandom(8).hex()}
        response = requests.post(f"{self.served.url}/v1/deals/{deal}/claims", headers=headers, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


@pytest.fixture
def shop(served: Served, tmp_path: Path) -> Shop:
    merchant = f"cafe-{next(_numbers)}-{os.getpid()}"
    created = backend_command(served.env, "merchant", "create", "--merchant", merchant)
    return Shop(served, merchant, created.strip().splitlines()[-1], tmp_path)


def voucher_id(counter: Counter, token: str) -> str:
    verdict = counter.judge(token, counter.time())
    assert verdict.voucher is not None
    return verdict.voucher.voucher_id


def no_pause(seconds: float) -> None:
    """The backoff's sleep, skipped: what is tested is where a sync resumes, not how long it waits."""


def test_two_offline_counters_both_accept_a_voucher_and_each_ledger_holds_the_backends_verdict(
    shop: Shop,
) -> None:
    till_a, till_b = shop.enrol("till-a"), shop.enrol("till-b")
    token = shop.voucher(shop.deal())
    with Counter.open(till_a) as a, Counter.open(till_b) as b:  # no network: each judges alone
        assert a.scan(token).reason is Reason.ACCEPTED
        assert b.scan(token).reason is Reason.ACCEPTED
        redeemed_at_a = a.ledger.redemptions()[0].redeemed_at
        report = sync(till_a, a.ledger)
        assert (report.uploaded, report.conflicts) == (1, 0)
    done = device_command("sync", "--config", till_b.source_file)  # the command a systemd timer runs
    assert done.returncode == 0, done.stderr
    assert "1 redemption up (1 conflict)" in done.stdout

    [conflict] = shop.call("GET", f"/v1/merchants/{shop.merchant}/conflicts")["conflicts"]
    assert [r["device_id"] for r in conflict["redemptions"]] == [till_a.device_id, till_b.device_id]
    with Counter.open(till_a) as a, Counter.open(till_b) as b:
        [mine] = a.ledger.redemptions()
        assert (mine.backend_status, mine.first_device_id) == ("ok", None)
        [theirs] = b.ledger.redemptions()
        assert (theirs.backend_status, theirs.first_device_id) == ("conflict", till_a.device_id)
        assert theirs.first_redeemed_at == pytest.approx(redeemed_at_a, abs=1)  # the backend keeps seconds
        assert theirs.result == "accepted"  # the verdict the counter gave is never changed
        assert a.ledger.peers().keys() == {till_b.device_id}  # the merchant's other counter, with its key
        assert b.ledger.unsynced_count() == 0

    status = json.loads(device_command("status", "--config", till_b.source_file, "--json").stdout)
    assert status["conflict_count"] == 1 and status["unsynced"] == 0
    assert status["conflicts"][0]["voucher_id"] == conflict["voucher_id"]
    assert status["conflicts"][0]["first_device_id"] == till_a.device_id
    valid_until = datetime.fromisoformat(status["keyset"]["valid_until"]).timestamp()  # RFC 3339
    assert status["keyset"]["stale"] is False and valid_until > time.time()
    assert status["peers"] == [till_a.device_id]
    text = device_command("status", "--config", till_b.source_file).stdout
    assert "conflicts  1" in text and f"first at {till_a.device_id}" in text


def test_10000_redemptions_over_a_connection_that_keeps_dropping_are_stored_exactly_once(
    shop: Shop, served: Served
) -> None:
    config = shop.enrol("till-bulk")
    fill_ledger(
        config.ledger_path,
        10_000,
        device_id=config.device_id,
        merchant=shop.merchant,
        deal="d-bulk",
        now=time.time(),
    )
    host, port = served.url.removeprefix("http://").split(":")
    with DroppingProxy((host, int(port)), every=4) as proxy, Counter.open(config) as counter:
        flaky = replace(config, backend_url=proxy.url)
        # a run that gives up at the first cut: what the backend confirmed stays confirmed
        with (
            BackendClient(
                proxy.url, load_device_key(flaky), load_trust_key(flaky, counter.ledger), timeout=10
            ) as client,
            pytest.raises(SyncFailed, match="cannot reach the backend"),
        ):
            Syncer(counter.ledger, client, batch_size=200, leeway=60, sleep=no_pause, tries=1).run()
        confirmed = counter.ledger.upload_watermark
        assert 0 < confirmed < 10_000 and counter.ledger.unsynced_count() == 10_000 - confirmed
        report = sync(flaky, counter.ledger, sleep=no_pause)  # the next run resumes there
        assert report.uploaded == 10_000 - confirmed and report.retries > 0
        assert proxy.drops >= 10
        assert counter.ledger.unsynced_count() == 0
        assert {r.backend_status for r in counter.ledger.redemptions()} == {"ok"}
        assert sync(flaky, counter.ledger, sleep=no_pause).uploaded == 0  # nothing left to send

    with SqliteDocumentStore(served.data / "store.sqlite3") as store:
        assert store.count_redemptions(shop.merchant) == 10_000


def test_a_revoked_voucher_and_a_cancelled_deal_are_refused_after_sync(shop: Shop) -> None:
    config = shop.enrol("till-1")
    deal, recalled = shop.deal(), shop.deal()
    revoked, fine, of_recalled = shop.claimed(deal), shop.voucher(deal), shop.voucher(recalled)
    with Counter.open(config) as counter:
        assert counter.scan(revoked, record=False).reason is Reason.ACCEPTED  # not revoked yet
        shop.call("POST", f"/v1/vouchers/{voucher_id(counter, revoked)}/revoke", {"deal_id": deal})
        shop.call("POST", f"/v1/deals/{recalled}/cancel")
        assert sync(config, counter.ledger).revoked == 2
        assert counter.scan(revoked).reason is Reason.REVOKED
        assert counter.scan(of_recalled).reason is Reason.REVOKED
        assert counter.scan(fine).reason is Reason.ACCEPTED
        assert sync(config, counter.ledger).revoked == 0  # the watermark: each revocation comes once


def test_a_counter_booted_30_days_behind_refuses_what_expired_and_a_sync_sets_the_floor_right(
    shop: Shop,
) -> None:
    config, deal = shop.enrol("till-1"), shop.deal()
    real = time.time()
    clock = Clock(real)
    with Counter.open(config, clock, synchronised=unsynchronised) as counter:
        sync(config, counter.ledger, clock=clock)
        assert counter.ledger.time_floor == pytest.approx(real, abs=5)
    clock.now = real - 30 * DAY  # an offline boot: the clock restored a month behind, not synchronised
    # valid by the wrong clock, expired in truth: issued 31 days ago for two days
    lapsed = shop.voucher(deal, now=real - 31 * DAY, ttl=int(2 * DAY))
    with Counter.open(config, clock, synchronised=unsynchronised) as counter:
        assert counter.time().state is ClockState.BEHIND_FLOOR
        assert counter.scan(lapsed).reason is Reason.EXPIRED
        assert counter.scan(shop.voucher(deal)).reason is Reason.ACCEPTED
        # the device token is dated by the backend's clock (its Date header), so the sync goes through
        report = sync(config, counter.ledger, clock=clock, sleep=no_pause)
        assert report.uploaded == 1
        assert counter.ledger.time_floor == pytest.approx(time.time(), abs=5)
        assert counter.ledger.last_sync == counter.ledger.time_floor
        assert counter.scan(lapsed).reason is Reason.EXPIRED


def test_a_clock_set_far_ahead_deletes_nothing_and_no_recovery_revives_a_redeemed_voucher(
    shop: Shop,
) -> None:
    config, deal = shop.enrol("till-1"), shop.deal()
    real = time.time()
    clock = Clock(real)
    redeemed = shop.voucher(deal, ttl=600)
    with Counter.open(config, clock, synchronised=unsynchronised) as counter:
        assert counter.scan(redeemed).reason is Reason.ACCEPTED
        sync(config, counter.ledger, clock=clock)  # synced: a row the old start-up pruning could delete
    clock.now = real + 365 * DAY  # set a year ahead by hand: not synchronised, so no evidence
    with Counter.open(config, clock, synchronised=unsynchronised) as counter:
        assert counter.ledger.time_floor == pytest.approx(real, abs=5)
        assert counter.ledger.accepted_count() == 1
    # Worse: the system calls that clock synchronised (a bad time server): the floor follows it...
    with Counter.open(config, clock, synchronised=lambda: True) as counter:
        assert counter.ledger.time_floor == clock.now
        assert counter.ledger.accepted_count() == 1  # ...but nothing is deleted on a clock's word
    clock.now = real
    with Counter.open(config, clock, synchronised=unsynchronised) as counter:
        assert counter.scan(shop.voucher(deal)).reason is Reason.EXPIRED  # judged at the pushed floor
        sync(config, counter.ledger, clock=clock)  # the recovery: the server's time sets the floor down
        assert counter.ledger.time_floor == pytest.approx(time.time(), abs=5)
        assert counter.scan(redeemed).reason is Reason.ALREADY_REDEEMED
        assert counter.scan(shop.voucher(deal)).reason is Reason.ACCEPTED


def test_a_running_scan_loop_verifies_with_the_key_set_sync_stored_without_a_restart(shop: Shop) -> None:
    config, deal = shop.enrol("till-1"), shop.deal()
    stranger = SigningKey.generate("k-old")  # the bundle's key set: a key the backend does not sign with
    config.keyset.write_text(KeySet([stranger.verification_key()]).to_json())
    assert config.source_file is not None
    with config.source_file.open("a") as toml:
        toml.write('\n[camera]\nsource = "keyboard"\npath = "-"\n\n[decoder]\ndebounce_seconds = 0\n')
    loop = start_device("run", "--config", config.source_file)
    try:
        assert loop.stdin is not None and loop.stdout is not None

        def show(token: str) -> str:
            loop.stdin.write(token + "\n")  # type: ignore[union-attr]
            loop.stdin.flush()  # type: ignore[union-attr]
            return loop.stdout.readline().split()[0]  # type: ignore[union-attr]

        assert show(shop.voucher(deal)) == "unknown_key"
        done = device_command("sync", "--config", config.source_file)
        assert done.returncode == 0, done.stderr
        assert show(shop.voucher(deal)) == "accepted"
    finally:
        if loop.stdin:
            loop.stdin.close()
        assert loop.wait(timeout=30) == 0


def test_key_rotation_end_to_end(shop: Shop) -> None:
    """A key the backend publishes reaches the counter at the next sync; vouchers of the older key
    stay valid meanwhile; a key the backend no longer publishes leaves the counter at the next sync."""
    config, deal = shop.enrol("till-1"), shop.deal()
    jwks = shop.keys_dir / "jwks.json"
    published = jwks.read_text()
    kid = f"kr{next(_numbers)}"
    try:
        keygen("EdDSA", kid, shop.keys_dir)  # step 1 of a rotation: publish first
        with Counter.open(config) as counter:
            assert counter.scan(shop.voucher(deal, kid=kid)).reason is Reason.UNKNOWN_KEY
            sync(config, counter.ledger)
            assert kid in counter.ledger.keyset()  # the counter takes it up at its next scan
            assert counter.scan(shop.voucher(deal, kid=kid)).reason is Reason.ACCEPTED
            assert counter.scan(shop.voucher(deal)).reason is Reason.ACCEPTED  # the older key still works
            jwks.write_text(published)  # the backend stops publishing it
            sync(config, counter.ledger)
            assert kid not in counter.ledger.keyset()
            assert counter.scan(shop.voucher(deal, kid=kid)).reason is Reason.UNKNOWN_KEY
    finally:
        jwks.write_text(published)
        (shop.keys_dir / f"{kid}.private.pem").unlink(missing_ok=True)


def test_sync_says_why_it_failed_in_one_line_and_exits_1_or_2(
    shop: Shop, write_config: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unconfigured = device_command("sync", "--config", write_config())
    assert unconfigured.returncode == 2
    assert (
        unconfigured.stderr.strip().splitlines()[-1].startswith("shopcardd-device sync: backend_url: not set")
    )

    config = shop.enrol("till-1")
    shop.call("POST", f"/v1/devices/{config.device_id}/revoke")
    refused = device_command("sync", "--config", config.source_file)
    assert refused.returncode == 1
    assert (
        f"the backend refused the sync (HTTP 401): device {config.device_id!r} is revoked" in refused.stderr
    )

    monkeypatch.setattr("shopcardd_device.sync.FIRST_PAUSE_SECONDS", 0.001)
    assert config.source_file is not None
    toml = config.source_file.read_text().replace(shop.served.url, "http://127.0.0.1:9")  # nobody listens
    config.source_file.write_text(toml)
    assert cli.main(["sync", "--config", str(config.source_file)]) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("shopcardd-device")]
    assert "cannot reach the backend at http://127.0.0.1:9 ([Errno 111] Connection refused)" in line
    assert "gave up after 6 tries" in line


def test_sync_from_a_terminal_fails_fast_with_a_line_per_try_and_retries_chooses(shop: Shop) -> None:
    """By hand with the backend down, the operator waits about a second, not the timer's 35 s of
    pauses, and sees each try; ``--retries`` chooses the tries with or without a terminal."""
    config = shop.enrol("till-1")
    assert config.source_file is not None
    toml = config.source_file.read_text().replace(shop.served.url, "http://127.0.0.1:9")  # nobody listens
    config.source_file.write_text(toml)
    command = [str(BIN / "shopcardd-device"), "sync", "--config", str(config.source_file)]
    _, terminal = pty.openpty()
    try:
        by_hand = subprocess.run(command, stdin=terminal, capture_output=True, text=True, timeout=60)
    finally:
        os.close(terminal)
    assert by_hand.returncode == 1
    lines = [line for line in by_hand.stderr.splitlines() if not line.startswith("{")]  # not the JSON log
    refused = "cannot reach the backend at http://127.0.0.1:9 ([Errno 111] Connection refused)"
    [retry, reason] = lines
    assert re.fullmatch(rf"try 1 of 2 failed: {re.escape(refused)}; trying again in 1\.[0-2] s", retry)
    assert reason == f"shopcardd-device sync: {refused} (gave up after 2 tries)"

    once = device_command("sync", "--config", config.source_file, "--retries", "0")  # no terminal
    assert once.returncode == 1
    assert once.stderr.splitlines()[-1] == f"shopcardd-device sync: {refused} (gave up after 1 try)"
    assert not device_log(once.stderr, "sync_retry")
    assert device_command("sync", "--config", config.source_file, "--retries", "x").returncode == 2


def test_with_the_shop_lan_a_race_within_the_gossip_delay_is_still_a_conflict_at_sync(shop: Shop) -> None:
    """Two tills that both accepted a voucher before either heard of the other's redemption (within
    the gossip delay) are still reported at sync; a voucher refused because of the LAN is no
    redemption, so it goes up from the till that redeemed it only."""
    from shopcardd_bench.lan import free_port, pinned_on_loopback
    from shopcardd_device.lan import Lan

    configs = {name: shop.enrol(name) for name in ("till-a", "till-b")}
    for config in configs.values():  # the first sync brings each the other as its peer
        with Counter.open(config) as counter:
            sync(config, counter.ledger)
    ports = {config.device_id: free_port() for config in configs.values()}
    lan = pinned_on_loopback(ports, hello_seconds=0.2)
    for config in configs.values():
        assert config.source_file is not None
        config.source_file.write_text(config.source_file.read_text() + f"\n[lan]\n{lan[config.device_id]}\n")
    till_a, till_b = (DeviceConfig.load(c.source_file) for c in configs.values())
    deal = shop.deal()
    raced, gossiped = shop.voucher(deal), shop.voucher(deal)
    with Counter.open(till_a) as a, Counter.open(till_b) as b:
        assert a.scan(raced).is_accepted and b.scan(raced).is_accepted  # both before any gossip
        raced_id = voucher_id(a, raced)
        assert a.scan(gossiped).is_accepted
        with (
            Lan(till_a, load_device_key(till_a)).start(),
            Lan(till_b, load_device_key(till_b)).start(),
        ):
            deadline = time.monotonic() + 30
            while b.judge(gossiped, b.time()).reason is not Reason.ALREADY_REDEEMED:
                assert time.monotonic() < deadline, "till-b did not hear of till-a's redemption"
                time.sleep(0.05)
        refused = b.scan(gossiped)
        assert refused.reason is Reason.ALREADY_REDEEMED and till_a.device_id in refused.detail
        assert sync(till_a, a.ledger).conflicts == 0
        report = sync(till_b, b.ledger)  # the race is reported; the refusal is no redemption
        assert (report.uploaded, report.conflicts) == (1, 1)
    [conflict] = shop.call("GET", f"/v1/merchants/{shop.merchant}/conflicts")["conflicts"]
    assert conflict["voucher_id"] == raced_id


def device_log(stderr: str, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``message`` that a ``shopcardd-device`` command wrote on stderr."""
    entries = [log_entry(line, "shopcardd-device") for line in stderr.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry["message"] == message]


def test_a_proxy_that_takes_16_kib_halves_the_batch_until_it_passes_and_every_redemption_is_confirmed(
    shop: Shop, served: Served
) -> None:
    """A proxy with a lower body limit than the backend's (the 16 KiB every other route takes)."""
    config = shop.enrol("till-proxied")
    assert config.source_file is not None and config.sync.batch_size == 200  # the default: about 34 KB
    fill_ledger(
        config.ledger_path,
        600,
        merchant=shop.merchant,
        deal="d-bulk",
        now=time.time(),
        device_id=config.device_id,
    )
    with BodyLimitProxy(served.url, 16 * 1024) as proxy:
        config.source_file.write_text(config.source_file.read_text().replace(served.url, proxy.url))
        done = device_command("sync", "--config", config.source_file)
    assert done.returncode == 0, done.stderr

    halved = device_log(done.stderr, "sync_batch_halved")
    assert halved and halved[0]["redemptions"] == 200
    for entry, then in zip(halved, [*halved[1:], None], strict=True):  # each halving of the last size
        assert entry["level"] == "warning" and "HTTP 413" in entry["error"]
        assert entry["batch_size"] == entry["redemptions"] // 2
        assert then is None or then["redemptions"] == entry["batch_size"]
    size = halved[-1]["batch_size"]
    assert f"600 redemptions up in batches halved to {size} " in done.stdout
    assert len(proxy.refused) == len(halved) and min(proxy.refused) > 16 * 1024
    assert proxy.passed and max(proxy.passed) <= 16 * 1024
    assert not device_log(done.stderr, "sync_failing")
    status = json.loads(device_command("status", "--config", config.source_file, "--json").stdout)
    assert (status["unsynced"], status["sync_failing"]) == (0, None)
    with SqliteDocumentStore(served.data / "store.sqlite3") as store:
        assert store.count_redemptions(shop.merchant) == 600


def test_a_sync_the_backend_keeps_refusing_exits_1_and_status_says_since_when_until_a_sync_succeeds(
    shop: Shop, served: Served
) -> None:
    config = shop.enrol("till-refused")
    assert config.source_file is not None
    fill_ledger(
        config.ledger_path,
        3,
        merchant=shop.merchant,
        deal="d-bulk",
        now=time.time(),
        device_id=config.device_id,
    )
    toml = config.source_file.read_text()

    def status() -> dict[str, Any]:
        return dict(json.loads(device_command("status", "--config", config.source_file, "--json").stdout))

    with BodyLimitProxy(served.url, 100) as proxy:  # not even one redemption (about 200 bytes) passes
        config.source_file.write_text(toml.replace(served.url, proxy.url))
        refused = device_command("sync", "--config", config.source_file)
        assert refused.returncode == 1, refused.stderr
        [reason] = [line for line in refused.stderr.splitlines() if line.startswith("shopcardd-device sync:")]
        assert reason == (
            "shopcardd-device sync: the backend refused the sync (HTTP 413): Request Entity Too Large "
            "(even a single redemption is more than it takes)"
        )
        halved = device_log(refused.stderr, "sync_batch_halved")
        assert [(e["redemptions"], e["batch_size"]) for e in halved] == [(3, 1)]
        [failing] = device_log(refused.stderr, "sync_failing")
        assert failing["level"] == "error" and failing["status"] == 413
        first = status()["sync_failing"]
        assert first["reason"] == reason.removeprefix("shopcardd-device sync: ")
        assert datetime.fromisoformat(first["since"]).timestamp() == pytest.approx(time.time(), abs=60)

        assert device_command("sync", "--config", config.source_file).returncode == 1  # the next tick
        assert status()["sync_failing"] == first  # failing since the first refusal, not the latest
        assert len(proxy.refused) == 4 and not proxy.passed  # 3, then 1, on each of the two runs
    text = device_command("status", "--config", config.source_file).stdout
    since = datetime.fromisoformat(first["since"]).isoformat(timespec="seconds")
    assert f"WARNING: sync failing since {since}: the backend refused the sync (HTTP 413)" in text

    config.source_file.write_text(toml)  # the proxy is out of the way: the next sync goes through
    synced = device_command("sync", "--config", config.source_file)
    assert synced.returncode == 0, synced.stderr
    assert (status()["sync_failing"], status()["unsynced"]) == (None, 0)
    assert "sync failing" not in device_command("status", "--config", config.source_file).stdout


# -- signed answers and the clock floor ----------------------------------------------------


class Answering(requests.adapters.HTTPAdapter):
    """Whoever sits between the counter and the backend (a TLS terminator, a CDN, someone on the
    shop's network): passes each request on and may change the answer (``change``), or answer
    with one it kept (``replay``). Every answer passing is kept in ``seen``."""

    def __init__(self, change: Any = None) -> None:
        super().__init__()
        self.change, self.replay = change, None
        self.seen: list[bytes] = []

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().send(request, *args, **kwargs)
        if response.status_code == 200 and self.replay is not None:
            response._content = self.replay
        elif response.status_code == 200 and self.change is not None:
            response._content = json.dumps(self.change(response.json())).encode()
        self.seen.append(response.content)
        return response


def through(adapter: Answering) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


def resigned(key: SigningKey, **told: Any) -> Any:
    """An answer whose signed document says ``told`` instead, signed anew by ``key``."""

    def change(answer: dict[str, Any]) -> dict[str, Any]:
        payload = {**parse_compact(answer["signed"]).payload(), **told}
        payload.pop("typ")
        return {**answer, **told, "signed": sign_document(key, ANSWER_TYPE, payload)}

    return change


def backend_trust_key(data: Path) -> SigningKey:
    kid = json.loads((data / "trust" / "chain.json").read_text())["current"]
    return SigningKey.load(kid, data / "trust" / f"{kid}.private.pem")


def test_an_impostors_answer_changes_nothing_and_the_sync_and_status_say_why(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone between counter and backend answers with its own voucher key, signed with a key of
    its own: the counter keeps its key set, its floor and its upload watermark, refuses the
    impostor's vouchers, the sync fails (exit 1), and status names the refusal until a good sync
    clears it."""
    config, deal = shop.enrol("till-1"), shop.deal()
    impostor = SigningKey.generate("kimp")
    their_keys = {
        "keys": [impostor.verification_key().to_jwk()],
        "issued_at": "2026-01-01T00:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
    }
    with Counter.open(config) as counter:
        assert counter.scan(shop.voucher(deal)).reason is Reason.ACCEPTED
        # the answer's plain fields changed: they are for reading; the signed document is believed
        plain = Answering(lambda answer: {**answer, "keys": their_keys})
        sync(config, counter.ledger, session=through(plain))
        assert "kimp" not in counter.ledger.keyset()
        assert counter.scan(shop.voucher(deal)).reason is Reason.ACCEPTED
        before = (counter.ledger.keyset_version(), counter.ledger.time_floor, counter.ledger.upload_watermark)
        signed = Answering(resigned(impostor, keys=their_keys, server_time="2020-01-01T00:00:00Z"))
        with pytest.raises(SyncFailed, match="the sync answer is not the backend's"):
            sync(config, counter.ledger, session=through(signed), sleep=no_pause)
        after = (counter.ledger.keyset_version(), counter.ledger.time_floor, counter.ledger.upload_watermark)
        assert after == before
        forged = issue(impostor, deal=deal, merchant=shop.merchant, user="u-eve", ttl=3600)
        assert counter.scan(forged).reason is Reason.UNKNOWN_KEY
    assert cli.main(["status", "--config", str(config.source_file), "--json"]) == 0
    refused = json.loads(capsys.readouterr().out)["sync_failing"]
    assert "signed by key 'kimp', not the trusted key" in refused["reason"]
    with Counter.open(config) as counter:
        sync(config, counter.ledger)
        assert counter.ledger.sync_failure is None and counter.ledger.upload_watermark == 2


def test_a_replayed_old_answer_is_refused_and_cannot_set_the_floor_back(shop: Shop) -> None:
    config, deal = shop.enrol("till-1"), shop.deal()
    recorder = Answering()
    with Counter.open(config) as counter:
        sync(config, counter.ledger, session=through(recorder))
        counter.ledger.raise_floor(time.time() + 3 * DAY)  # evidence since: three days have passed
        floor = counter.ledger.time_floor
        replayer = Answering()
        replayer.replay = recorder.seen[-1]  # the genuine, signed answer of three days ago
        with pytest.raises(SyncFailed, match="not the answer to this request"):
            sync(config, counter.ledger, session=through(replayer), sleep=no_pause)
        assert counter.ledger.time_floor == floor
        lapsed = shop.voucher(deal, now=time.time() + 3 * DAY - 7200, ttl=3600)  # expired yesterday
        assert counter.scan(lapsed).reason is Reason.EXPIRED


def test_a_backend_clock_two_years_ahead_heals_at_the_next_sync_and_nothing_redeemed_comes_back(
    shop: Shop,
) -> None:
    """The backend's clock jumps two years ahead for one answer, then is corrected: that answer
    prunes no redemption it alone made look expired, and the next answer sets the floor back."""
    config, deal = shop.enrol("till-1"), shop.deal()
    redeemed = shop.voucher(deal, ttl=int(30 * DAY))
    ahead = datetime.fromtimestamp(time.time() + 730 * DAY, UTC).isoformat().replace("+00:00", "Z")
    with Counter.open(config) as counter:
        assert counter.scan(redeemed).reason is Reason.ACCEPTED
        sync(config, counter.ledger)  # uploaded: from now on the ledger may let its row go
        wrong = Answering(resigned(backend_trust_key(shop.served.data), server_time=ahead))
        sync(config, counter.ledger, session=through(wrong))
        assert counter.ledger.time_floor == pytest.approx(time.time() + 730 * DAY, abs=60)
        assert counter.ledger.accepted_count() == 1  # not pruned in the sync that jumped the floor
        sync(config, counter.ledger)  # the backend's clock corrected
        assert counter.ledger.time_floor == pytest.approx(time.time(), abs=5)
        assert counter.scan(redeemed).reason is Reason.ALREADY_REDEEMED
        assert counter.scan(shop.voucher(deal, ttl=int(DAY))).reason is Reason.ACCEPTED


def test_a_new_trust_key_announced_by_the_old_one_moves_the_pin_and_the_old_one_is_then_refused(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCARDD_")}
    env["SHOPCARDD_DATA_DIR"] = str(tmp_path / "data")
    with running_backend(env, tmp_path / "serve.log") as backend:
        api_key = backend_command(env, "merchant", "create", "--merchant", "m-rot").strip().splitlines()[-1]
        config = DeviceConfig.load(
            enrol_counter(backend.url, api_key, "m-rot-till", tmp_path / "till", "m-rot")
        )
        with Counter.open(config) as counter:
            sync(config, counter.ledger)
    old = backend_trust_key(tmp_path / "data")
    new_kid = backend_command(env, "trust-key", "rotate").strip()
    assert new_kid != old.kid
    with running_backend(env, tmp_path / "serve-2.log") as backend, Counter.open(config) as counter:
        pinned = json.loads(config.trust_key.read_text())  # type: ignore[union-attr]
        assert pinned["kid"] == old.kid  # the bundle keeps the first pin...
        config = replace(config, backend_url=backend.url)
        sync(config, counter.ledger)
        assert load_trust_key(config, counter.ledger).kid == new_kid  # ...the ledger follows the chain
        # the retired key (stolen, say) signs an answer of its own, without the link that retired
        # it: the pin moved on, so it is no longer believed
        with pytest.raises(SyncFailed, match=f"signed by key '{old.kid}', not the trusted key '{new_kid}'"):
            stolen = Answering(lambda answer: {**resigned(old)(answer), "trust_chain": []})
            sync(config, counter.ledger, session=through(stolen), sleep=no_pause)
