"""The shop LAN (``shopcardd_device.lan``): counters tell each other of redemptions, signed.

Two counters of one shop on loopback, as enrolment and a sync leave them (``make_shop``), no
backend. Outcomes are waited for by polling up to a generous deadline, never by sleeping. The
three-host version (network namespaces, a link cut and healed) is ``test_lan_netns.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from jwt.utils import base64url_decode, base64url_encode

from shopcardd_bench.lan import free_port, make_shop, pinned_on_loopback
from shopcardd_bench.synthetic import ScriptedSource
from shopcardd_device import gossip
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.lan import Lan, open_lan
from shopcardd_device.ledger import LanRecord, Ledger, SyncRecord
from shopcardd_device.runtime import open_counter
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
    assert datetime.fromisoformat(lan["last_heard"]).timestamp() <= time.time()  # RFC 3339, UTC
    text = device_command("status", "--config", shop.paths["till-b"]).stdout
    assert "shop LAN   on" in text and "1 peer seen" in text and "records received 1" in text


def test_the_counter_tells_the_lan_of_each_redemption_once_not_of_a_repeat_or_a_refusal(
    shop: Shop, till_b: Lan, mint: Mint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule lives in the counter's runtime, which ``run`` and ``shopcardd-bench lan`` both use:
    a code held in view (a repeat) and a refused voucher wake the node for nothing."""
    token = mint()
    with open_counter(shop.configs["till-a"]) as till_a:
        assert till_a.lan is not None
        woken: list[None] = []
        monkeypatch.setattr(till_a.lan, "announce", lambda: woken.append(None))
        scanner = till_a.scanner(ScriptedSource([]), None)
        assert scanner.scan(token).verdict.is_accepted and len(woken) == 1
        assert scanner.scan(token).repeated and len(woken) == 1  # held in view: nothing new recorded
        assert not scanner.scan(mint(merchant="m-else")).verdict.is_accepted and len(woken) == 1
        assert scanner.scan(mint()).verdict.is_accepted and len(woken) == 2
    wait_for("till-b refuses the voucher", lambda: shop.verdict("till-b", token) is Reason.ALREADY_REDEEMED)


# -- nothing trusted that is not signed ---------------------------------------------------------


def next_start(shop: Shop, device: str) -> int:
    """The start number ``device``'s next process would take (its ledger's, as ``Lan.start`` does)."""
    with Ledger(shop.configs[device].ledger_path) as ledger:
        return ledger.lan_start(time.time())


def heard(shop: Shop, device: str) -> dict[str, tuple[int, int]]:
    """(start, count) of the last message ``device``'s ledger holds of each peer."""
    with Ledger(shop.configs[device].ledger_path) as ledger:
        return ledger.lan_heard()


class Attacker:
    """A host on the shop's LAN sending datagrams of its choosing to till-b, from a port of its
    own, or from ``port`` (a counter's address while that counter is off, as a spoofer would)."""

    def __init__(self, shop: Shop, target: Lan, *, port: int = 0) -> None:
        self.shop, self.address = shop, ("127.0.0.1", target.address[1])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.barriers = 0
        self._senders: dict[tuple[int, str], gossip.Sender] = {}

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.address)

    def sender(self, key: SigningKey, merchant: str = MERCHANT) -> gossip.Sender:
        """Messages as by a new process of ``key``'s device (a forger's key: whatever it likes)."""
        genuine = key is self.shop.keys.get(key.kid)
        found = self._senders.get((id(key), merchant))
        if found is None:
            start = next_start(self.shop, key.kid) if genuine else 1
            found = gossip.Sender(key, merchant=merchant, epoch="e1", start=start)
            self._senders[(id(key), merchant)] = found
        return found

    def records(self, key: SigningKey, voucher_id: str, *, merchant: str = MERCHANT, seq: int = 1) -> bytes:
        row = LanRecord(voucher_id, "d-espresso", time.time(), int(time.time()) + 3600, seq)
        return gossip.records(self.sender(key, merchant), rows=[row], after=seq - 1, through=seq)

    def received(self) -> list[bytes]:
        """What arrived here so far (nothing waited for)."""
        self.sock.setblocking(False)
        arrived = []
        with contextlib.suppress(BlockingIOError):
            while True:
                arrived.append(self.sock.recv(gossip.MAX_DATAGRAM))
        self.sock.setblocking(True)
        return arrived

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


def records_in(datagrams: list[bytes], shop: Shop) -> int:
    """How many of ``datagrams`` are till-b's records (its answers), as till-a would read them."""
    peers = {"till-b": parse_public_jwk(public_jwk(shop.keys["till-b"]))}
    kinds = []
    for datagram in datagrams:
        with contextlib.suppress(gossip.Dropped):
            kinds.append(gossip.read(datagram, merchant=MERCHANT, peers=peers).kind)
    return kinds.count(gossip.RECORDS)


def learned_by_till_b(shop: Shop, till_b: Lan, mint: Mint) -> None:
    """Run till-a until till-b has learned its address: till-b's redemption made while till-a was off
    reaches till-a only by the catch-up, which till-b answers only to a learned address."""
    token = mint()
    redeem(shop, "till-b", token, till_b)
    with shop.node("till-a"):
        wait_for(
            "till-a caught up with till-b", lambda: shop.verdict("till-a", token) is Reason.ALREADY_REDEEMED
        )


def recorded(shop: Shop, *, count: int = 1) -> gossip.Sender:
    """Messages as till-a's last process made them (its start as till-b holds it; counts after the
    last till-b heard, so the one thing that makes them old is that till-a has restarted since)."""
    start, last = heard(shop, "till-b")["till-a"]
    with Ledger(shop.configs["till-a"].ledger_path) as ledger:
        epoch = ledger.lan_epoch()
    sender = gossip.Sender(shop.keys["till-a"], merchant=MERCHANT, epoch=epoch, start=start)
    sender.count = last + count
    return sender


def test_a_replayed_ask_from_an_earlier_process_gets_no_answer(
    shop: Shop, till_b: Lan, mint: Mint, lan_log: list[logging.LogRecord]
) -> None:
    learned_by_till_b(shop, till_b, mint)  # till-a's first process
    ask = gossip.ask(recorded(shop), to="till-b", after=0)  # all till-b's records: a page
    first_start = heard(shop, "till-b")["till-a"][0]
    learned_by_till_b(shop, till_b, mint)  # till-a restarted; now it is off again
    assert heard(shop, "till-b")["till-a"][0] > first_start
    elsewhere = Attacker(shop, till_b)
    at_till_a = Attacker(shop, till_b, port=shop.ports["till-a"])  # spoofing till-a's own address
    for _ in range(40):
        elsewhere.send(ask)
        at_till_a.send(ask)
    at_till_a.barrier()  # till-b has dealt with every ask (and would have answered by now)
    assert elsewhere.received() == []
    assert records_in(at_till_a.received(), shop) == 0
    assert dropped(lan_log, "wrong_address") == dropped(lan_log, "replayed") == 1
    for attacker in (elsewhere, at_till_a):
        attacker.sock.close()


def test_a_replayed_old_hello_does_not_move_the_learned_address(shop: Shop, till_b: Lan, mint: Mint) -> None:
    learned_by_till_b(shop, till_b, mint)  # till-a's first process
    hello = gossip.hello(recorded(shop), last_seq=0, challenge="c", echoes={}, wants=["till-b"])
    token = mint()
    with shop.node("till-a"):
        wait_for("till-b heard till-a's new process", lambda: heard(shop, "till-b")["till-a"] > (0, 0))
        elsewhere = Attacker(shop, till_b)
        for _ in range(10):
            elsewhere.send(hello)
        redeem(shop, "till-b", token, till_b)
        wait_for(
            "till-a recorded the redemption", lambda: shop.verdict("till-a", token) is Reason.ALREADY_REDEEMED
        )
    assert elsewhere.received() == []  # the record went to till-a only; not even a hello here
    elsewhere.sock.close()


def test_a_flood_naming_a_peer_from_another_address_does_not_delay_its_records(
    shop: Shop, till_b: Lan, mint: Mint
) -> None:
    learned_by_till_b(shop, till_b, mint)
    till_a = Attacker(shop, till_b, port=shop.ports["till-a"])  # till-a's next process, by hand: no catch-up
    flood = Attacker(shop, till_b)
    forger = SigningKey.generate("till-a")  # till-a's id, any key: each would cost a signature check
    with Ledger(shop.configs["till-b"].ledger_path) as ledger:
        for number in range(1, 11):
            for _ in range(110):  # more than the checks the budget allows at once
                flood.send(flood.records(forger, "v-lie"))
            voucher_id = f"v-genuine-{number}"
            till_a.send(till_a.records(shop.keys["till-a"], voucher_id, seq=number))  # once, never again
            wait_for(
                f"till-b holds {voucher_id}", lambda v=voucher_id: ledger.redeemed_by_peer(v) is not None
            )
    for attacker in (till_a, flood):
        attacker.sock.close()


def test_the_lan_counter_rises_across_restarts_and_a_restarted_counter_still_refuses_a_replay(
    shop: Shop, mint: Mint, lan_log: list[logging.LogRecord]
) -> None:
    with Ledger(shop.configs["till-a"].ledger_path) as ledger:
        first = ledger.lan_start(time.time())
        assert ledger.lan_start(time.time() - 86_400) == first + 1  # a clock set back: still above
    with shop.node("till-b") as till_b:
        learned_by_till_b(shop, till_b, mint)
        start, _ = heard(shop, "till-b")["till-a"]
        assert start > first + 1
        hello = gossip.hello(recorded(shop), last_seq=0, challenge="c", echoes={})
        learned_by_till_b(shop, till_b, mint)  # till-a restarted
    with shop.node("till-b") as till_b:  # till-b restarted too: it has learned no address yet
        attacker = Attacker(shop, till_b)
        attacker.send(hello)
        attacker.barrier()
        attacker.sock.close()
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
    sender = gossip.Sender(key, merchant=MERCHANT, epoch="e1", start=1)
    genuine = gossip.records(sender, rows=[row], after=0, through=1)
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
