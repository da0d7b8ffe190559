"""The shop LAN (``shopcardd_device.lan``): counters tell each other of redemptions, signed.

Two counters of one shop on loopback, as enrolment and a sync leave them (``make_shop``), no
backend. Outcomes are waited for by polling up to a generous deadline, never by sleeping. The
three-host version (network namespaces, a link cut and healed) is ``test_lan_netns.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from jwt.utils import base64url_decode, base64url_encode

from shopcardd_bench.lan import free_port, make_shop, pinned_on_loopback
from shopcardd_device import gossip
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.lan import Lan, open_lan
from shopcardd_device.ledger import LanRecord, Ledger, SyncRecord
from shopcardd_voucher import KeySet, Reason, SigningKey
from shopcardd_voucher.device_auth import parse_public_jwk, public_jwk

from .conftest import MERCHANT, Keys, Mint, device_command

DEADLINE_SECONDS = 30.0
DEVICES = ("till-a", "till-b")


def wait_for(what: str, check: Callable[[], bool], deadline: float = DEADLINE_SECONDS) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.02)


class Shop:
    """Two counters' configs and device keys; nodes are started by each test."""

    def __init__(self, folder: Path, keys: Keys) -> None:
        ports = {device: free_port() for device in DEVICES}
        paths = make_shop(
            folder,
            DEVICES,
            voucher_keys=KeySet.load(keys.jwks),
            merchant=MERCHANT,
            lan=pinned_on_loopback(ports, hello_seconds=0.2),
        )
        self.configs = {device: DeviceConfig.load(path) for device, path in paths.items()}
        self.paths = paths
        self.keys = {
            device: SigningKey.load(device, config.device_key)  # type: ignore[arg-type]
            for device, config in self.configs.items()
        }
        self.ports = ports

    def node(self, device: str) -> Lan:
        return Lan(self.configs[device], self.keys[device]).start()

    def counter(self, device: str) -> Counter:
        return Counter.open(self.configs[device])

    def verdict(self, device: str, token: str) -> Reason:
        """What ``device`` would answer now, recording nothing."""
        with self.counter(device) as counter:
            return counter.judge(token, counter.time()).reason


@pytest.fixture
def shop(tmp_path: Path, keys: Keys) -> Shop:
    return Shop(tmp_path, keys)


@pytest.fixture
def till_b(shop: Shop) -> Iterator[Lan]:
    with shop.node("till-b") as node:
        yield node


def redeem(shop: Shop, device: str, token: str, node: Lan | None) -> None:
    """Scan ``token`` at ``device`` as the scan loop does: commit, then tell the LAN."""
    with shop.counter(device) as counter:
        assert counter.scan(token).is_accepted
    if node is not None:
        node.announce()


# -- two counters gossip ------------------------------------------------------------------------


def test_a_voucher_redeemed_at_one_counter_is_already_redeemed_at_the_other_saying_where(
    shop: Shop, till_b: Lan, mint: Mint
) -> None:
    token = mint()
    with shop.node("till-a") as till_a:
        redeem(shop, "till-a", token, till_a)
        wait_for(
            "till-b refuses the voucher", lambda: shop.verdict("till-b", token) is Reason.ALREADY_REDEEMED
        )
    with shop.counter("till-b") as counter:
        verdict = counter.scan(token)
    assert verdict.reason is Reason.ALREADY_REDEEMED
    assert "redeemed at counter till-a" in verdict.detail
    answer = json.loads(
        device_command("verify", "--config", shop.paths["till-b"], "--json", "--dry-run", token).stdout
    )
    assert answer["result"] == "already_redeemed" and "till-a" in answer["detail"]


def test_a_counter_that_was_off_learns_what_it_missed_when_it_comes_back(shop: Shop, mint: Mint) -> None:
    tokens = [mint() for _ in range(3)]
    with shop.node("till-a") as till_a:
        for token in tokens:  # till-b is off: what till-a sends now is lost
            redeem(shop, "till-a", token, till_a)
        assert [shop.verdict("till-b", t) for t in tokens] == [Reason.ACCEPTED] * 3
        with shop.node("till-b"):
            wait_for(
                "till-b caught up with till-a",
                lambda: all(shop.verdict("till-b", t) is Reason.ALREADY_REDEEMED for t in tokens),
            )


def test_status_shows_peers_seen_last_heard_records_received_and_sent(
    shop: Shop, till_b: Lan, mint: Mint
) -> None:
    def status(device: str) -> dict[str, object]:
        done = device_command("status", "--config", shop.paths[device], "--json")
        return json.loads(done.stdout)["lan"]

    token = mint()
    with shop.node("till-a") as till_a:
        wait_for(
            "each heard the other",
            lambda: status("till-a")["peers_seen"] == status("till-b")["peers_seen"] == 1,
        )
        redeem(shop, "till-a", token, till_a)
        wait_for("till-b recorded it", lambda: shop.verdict("till-b", token) is Reason.ALREADY_REDEEMED)
        wait_for("till-a counted the record sent", lambda: status("till-a")["sent"] == 1)
    lan = status("till-b")
    assert lan["enabled"] is True and lan["peers_seen"] == 1 and lan["received"] == 1
    assert isinstance(lan["last_heard"], float) and lan["last_heard"] <= time.time()
    text = device_command("status", "--config", shop.paths["till-b"]).stdout
    assert "shop LAN   on" in text and "1 peer seen" in text and "records received 1" in text


# -- nothing trusted that is not signed ---------------------------------------------------------


class Attacker:
    """A host on the shop's LAN sending datagrams of its choosing to till-b."""

    def __init__(self, shop: Shop, target: Lan) -> None:
        self.shop, self.address = shop, ("127.0.0.1", target.address[1])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.barriers = 0

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.address)

    def records(self, key: SigningKey, voucher_id: str, *, merchant: str = MERCHANT, seq: int = 1) -> bytes:
        row = LanRecord(voucher_id, "d-espresso", time.time(), int(time.time()) + 3600, seq)
        return gossip.records(key, merchant=merchant, epoch="e1", rows=[row], after=seq - 1, through=seq)

    def barrier(self) -> None:
        """A genuine record of a fresh voucher from till-a, sent last: once till-b holds it, it has
        dealt with everything sent before it (one queue, one worker, in order). Sent again until it
        arrives: after a flood the kernel may drop it (a record twice is a record once)."""
        self.barriers += 1
        voucher_id = f"barrier-{self.barriers}"
        datagram = self.records(self.shop.keys["till-a"], voucher_id, seq=1000 + self.barriers)

        def arrived() -> bool:
            if ledger.redeemed_by_peer(voucher_id) is not None:
                return True
            self.send(datagram)
            return False

        with Ledger(self.shop.configs["till-b"].ledger_path) as ledger:
            wait_for("till-b took the barrier", arrived)


@pytest.fixture
def attacker(shop: Shop, till_b: Lan) -> Iterator[Attacker]:
    attacker = Attacker(shop, till_b)
    yield attacker
    attacker.sock.close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lan_log() -> Iterator[list[logging.LogRecord]]:
    """The LAN node's log lines (on its own logger: whatever another test did to the device's)."""
    logger = logging.getLogger("shopcardd_device.lan")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def dropped(records: list[logging.LogRecord], reason: str) -> int:
    return sum(r.getMessage() == "lan_dropped" and getattr(r, "reason", "") == reason for r in records)


@pytest.mark.parametrize(
    ("signer", "merchant", "reason"),
    [
        ("forger", MERCHANT, "bad_signature"),  # under till-a's id, signed with another key
        ("stranger", MERCHANT, "unknown_device"),  # no counter of this merchant
        ("till-a", "m-other-shop", "other_merchant"),  # till-a's own key, another merchant's record
    ],
)
def test_a_forged_strangers_or_other_merchants_record_is_refused_and_the_voucher_stays_good(
    shop: Shop,
    attacker: Attacker,
    mint: Mint,
    lan_log: list[logging.LogRecord],
    signer: str,
    merchant: str,
    reason: str,
) -> None:
    key = {
        "forger": SigningKey.generate("till-a"),
        "stranger": SigningKey.generate("till-z"),
        "till-a": shop.keys["till-a"],
    }[signer]
    token = mint(voucher_id="v-lie")
    attacker.send(attacker.records(key, "v-lie", merchant=merchant))
    attacker.barrier()
    assert shop.verdict("till-b", token) is Reason.ACCEPTED
    assert dropped(lan_log, reason) == 1


def test_a_replayed_record_changes_nothing(shop: Shop, attacker: Attacker, mint: Mint) -> None:
    token = mint(voucher_id="v-once")
    genuine = attacker.records(shop.keys["till-a"], "v-once")
    attacker.send(genuine)
    attacker.barrier()
    assert shop.verdict("till-b", token) is Reason.ALREADY_REDEEMED
    with Ledger(shop.configs["till-b"].ledger_path) as ledger:
        before = ledger.lan_peers()
    for _ in range(3):
        attacker.send(genuine)
    attacker.barrier()
    with Ledger(shop.configs["till-b"].ledger_path) as ledger:
        after = ledger.lan_peers()
    assert [p.received for p in after] == [p.received + 1 for p in before]  # the barrier only


def test_a_replayed_hello_is_refused(
    shop: Shop, attacker: Attacker, lan_log: list[logging.LogRecord]
) -> None:
    hello = gossip.hello(shop.keys["till-a"], merchant=MERCHANT, epoch="e1", last_seq=0, boot="b1", count=1)
    attacker.send(hello)
    attacker.send(hello)
    attacker.barrier()
    assert dropped(lan_log, "replayed") == 1


def test_a_device_revoked_at_a_sync_is_no_longer_believed(
    shop: Shop, keys: Keys, mint: Mint, lan_log: list[logging.LogRecord]
) -> None:
    before, after = mint(voucher_id="v-before"), mint(voucher_id="v-after")
    with shop.node("till-b") as till_b:
        attacker = Attacker(shop, till_b)
        attacker.send(attacker.records(shop.keys["till-a"], "v-before"))
        attacker.barrier()
        assert shop.verdict("till-b", before) is Reason.ALREADY_REDEEMED
    now = time.time()
    with Ledger(shop.configs["till-b"].ledger_path) as ledger:  # the merchant revoked till-a: a sync says so
        ledger.apply_sync(
            SyncRecord(0, [], KeySet.load(keys.jwks), now, now + 86_400, [], [], None, {}, now), 60
        )
    assert shop.verdict("till-b", before) is Reason.ACCEPTED  # its word no longer counts
    with shop.node("till-b"):  # the same port again
        attacker.send(attacker.records(shop.keys["till-a"], "v-after", seq=2))
        wait_for("till-b dropped till-a's record", lambda: dropped(lan_log, "unknown_device") == 1)
    attacker.sock.close()
    assert shop.verdict("till-b", after) is Reason.ACCEPTED


def test_a_flood_of_junk_is_dropped_with_few_log_lines_and_gossip_gets_through(
    shop: Shop, attacker: Attacker, lan_log: list[logging.LogRecord]
) -> None:
    stranger = SigningKey.generate("till-z")
    forger = SigningKey.generate("till-a")  # names a peer: costs a signature check, while the budget lasts
    junk = [
        b"\x00" * 40,
        b"not.a.message",
        attacker.records(stranger, "v-junk"),
        attacker.records(forger, "v-junk"),
    ]
    for number in range(3_000):
        attacker.send(junk[number % len(junk)])
    attacker.barrier()  # a genuine record still gets through
    lines = [r for r in lan_log if r.getMessage() == "lan_dropped"]
    assert 1 <= len(lines) <= 8  # one line per reason per 10 s, not one per datagram


def test_an_altered_record_another_algorithm_or_junk_is_refused_saying_why() -> None:
    key = SigningKey.generate("till-a")
    peers = {"till-a": parse_public_jwk(public_jwk(key))}
    row = LanRecord("v-1", "d-1", 1_767_000_000.5, 1_767_003_600, 1)
    genuine = gossip.records(key, merchant=MERCHANT, epoch="e1", rows=[row], after=0, through=1)
    assert gossip.read(genuine, merchant=MERCHANT, peers=peers).records == (row,)
    header, body, signature = genuine.split(b".")
    altered = base64url_encode(base64url_decode(body).replace(b"v-1", b"v-2"))
    unsigned = base64url_encode(b'{"alg":"none","kid":"till-a"}')
    for datagram, reason in [
        (b".".join([header, altered, signature]), "bad_signature"),
        (b".".join([unsigned, body, signature]), "bad_signature"),  # "none", or any other algorithm
        (b".".join([unsigned, body, b""]), "bad_format"),  # no signature at all: not a compact JWS
        (genuine + b"=", "bad_format"),  # a second spelling of the signature
        (b"\xff" * 10, "bad_format"),
    ]:
        with pytest.raises(gossip.Dropped) as dropped_as:
            gossip.read(datagram, merchant=MERCHANT, peers=peers)
        assert dropped_as.value.reason == reason


# -- configuration --------------------------------------------------------------------------------


def test_lan_settings_are_checked_naming_the_setting(write_config: Callable[..., Path]) -> None:
    config = DeviceConfig.load(write_config('[lan]\nport = 5000\npeers = ["10.0.0.2:5001", "till-3.local"]'))
    assert config.lan.enabled and config.lan.peers == (("10.0.0.2", 5001), ("till-3.local", 5000))
    assert not DeviceConfig.load(write_config("[lan]\nenabled = false")).lan.enabled
    for table, named in [
        ('peers = ["10.0.0.2:http"]', "[lan] peers"),
        ('group = "10.0.0.1"', "[lan] group"),
        ("port = 0", "[lan] port"),
        ("gossip = true", "[lan] gossip: unknown setting"),
    ]:
        with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
            DeviceConfig.load(write_config(f"[lan]\n{table}"))


def test_the_lan_can_be_switched_off_and_a_port_in_use_leaves_the_counter_scanning(
    shop: Shop, till_b: Lan, lan_log: list[logging.LogRecord]
) -> None:
    path = shop.paths["till-a"]
    path.write_text(path.read_text().replace("[lan]\n", "[lan]\nenabled = false\n"))
    off = DeviceConfig.load(path)
    assert open_lan(off) is None
    assert json.loads(device_command("status", "--config", path, "--json").stdout)["lan"]["enabled"] is False
    assert "shop LAN   off" in device_command("status", "--config", path).stdout
    taken = replace(shop.configs["till-a"], lan=replace(shop.configs["till-a"].lan, port=till_b.address[1]))
    assert open_lan(taken) is None  # till-b holds the port: said in one line, and no node
    assert [r.getMessage() for r in lan_log] == ["lan_off"]
