"""The shop LAN: counters of one merchant tell each other of each redemption, offline.

A voucher redeemed at till A must be refused at till B even while the shop's internet is down.
So ``shopcardd-device run`` keeps a small UDP node beside its scan loop (``Lan``):

- Discovery without configuration: a signed hello to a multicast group (``[lan] group``, port
  ``[lan] port``, TTL 1: the shop's own network) every ``hello_seconds``; pinned ``[lan] peers``
  addresses get it by unicast, for networks where multicast does not reach.
- Learning a peer's address: a peer's hello echoes this node's recent challenge (``gossip``); the
  address it came from is then the peer's, until nothing comes from there for ``FORGET_SECONDS``.
  A replayed hello echoes a stale challenge, so it cannot move an address. Once learned, a
  datagram naming that peer from any other address is dropped before its signature is checked.
- Gossip: right after a redemption is committed and signalled, the scan loop calls ``announce``
  (it only wakes the node), and the node sends the new redemptions, signed with the device key
  (``gossip``), to every learned and pinned address, by unicast.
- Catch-up: each peer's hello says how far its ledger has numbered its redemptions; a counter
  whose watermark for that peer is behind asks for the rest, and the pages that come back move
  the watermark on. An ask is answered only to the asker's learned address, never to where the
  datagram came from, so a recorded ask cannot aim pages at a victim. A counter that was off or
  cut off learns what it missed within a hello or two of coming back, from each peer directly,
  and a lost datagram is asked for again.

Nothing is trusted that is not signed by a counter the last sync named as the merchant's
(``Ledger.peers``) and newer than the last message heard from that counter (a start number the
ledger raises at each start, then a count: ``Ledger.lan_start``, ``Ledger.lan_heard``), so a
message recorded from an earlier process is a replay across restarts of either counter. Anything
else is dropped and logged, one line per reason per ``pacing.LOG_EVERY_SECONDS`` at most, counting the
lines left out. A junk flood cannot slow the scan much (``shopcardd-bench lan`` measures it): the
receiving thread reads at most ``MAX_DATAGRAMS_PER_SECOND`` (the kernel drops the rest) into a
bounded queue (full: dropped), a datagram of an unknown device, or naming a learned peer from
another address, costs no signature check, at most ``MAX_CHECKS_PER_SECOND``
signatures are checked, and the work (checking, ledger writes, sending) runs on a thread of its
own with its own ledger connection, whose commits are not fsynced (``Ledger.lan_connection``).
New redemptions are sent at once after a quiet spell and in batches during a burst
(``SEND_GAP_SECONDS``), so the scan loop never pays a thread switch per redemption.

What this does not close: two counters that scan one voucher within the gossip delay (a few
milliseconds on a LAN; ``shopcardd-bench lan``) may both accept it; sync reports that conflict.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, Self

from cryptography.hazmat.primitives.asymmetric import ed25519

from shopcardd_voucher import SigningKey
from shopcardd_voucher.device_auth import DeviceTokenError, parse_public_jwk

from . import gossip
from .closing import Closing
from .config import DeviceConfig
from .ledger import LanRecord, Ledger
from .log import event, get_logger
from .pacing import MAX_CHECKS_PER_SECOND, MAX_DATAGRAMS_PER_SECOND, Budget, Throttle

Address = tuple[str, int]

INBOX_SIZE: Final = 256
"""Datagrams waiting to be checked; more are dropped (a flood, never a peer's normal traffic)."""
TICK_SECONDS: Final = 0.25
"""Even unwoken, the worker looks for new redemptions this often: one committed by another
process at the same ledger (``verify``) announces nothing here, and a wake can be lost to a full
inbox. A look is one indexed query for rows after the last one sent."""
SEND_GAP_SECONDS: Final = 0.02
"""Sends of new redemptions are at least this far apart: a redemption after a quiet spell goes at
once; a burst (the bench's back-to-back frames) goes in batches, so the scan loop does not pay a
thread switch per redemption."""
CHALLENGES_KEPT: Final = 4
"""A hello echoing any of this node's last few challenges (one new per hello) proves where its
sender is now: a peer's echo lags by up to a hello of its own."""
FORGET_SECONDS: Final = 60.0
"""A learned address silent this long (and three hellos) is let go: the peer may have moved (a new
DHCP lease); until it is learned again, datagrams naming it cost a signature check each."""
PEERS_REFRESH_SECONDS: Final = 5.0
"""How often the node reads the ledger's peers again (a sync in another process replaces them)."""
ASK_AGAIN_SECONDS: Final = 1.0
MAX_ROWS_PER_ANSWER: Final = 400
STATS_EVERY_SECONDS: Final = 2.0
PRUNE_EVERY_SECONDS: Final = 3_600.0
_WAKE: Final = object()

log = get_logger("lan")


class Lan(Closing):
    """The node: ``start`` it, ``announce`` after each redemption, ``close`` it (sends what is new
    first). ``on_record(device_id, count)`` is called after records of a peer were committed here
    (the bench times the gossip delay with it)."""

    _ledger: Ledger
    """The worker thread's own connection (set when it starts; only that thread uses it)."""
    _sender: gossip.Sender
    _last_sent: int
    """The last number of this device's redemptions sent to the peers."""

    def __init__(
        self,
        config: DeviceConfig,
        key: SigningKey,
        *,
        on_record: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.key, self.on_record = config, key, on_record
        self._clock, self._monotonic = clock, monotonic
        self._inbox: queue.Queue[object] = queue.Queue(INBOX_SIZE)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self._throttle = Throttle(log, monotonic)
        self._checks = Budget(MAX_CHECKS_PER_SECOND, monotonic)
        self._peers: dict[str, ed25519.Ed25519PublicKey] = {}
        self._heard: dict[str, tuple[int, int]] = {}
        """device -> (start, count) of its last message, as the ledger keeps it: older ones are replays."""
        self._learned: dict[str, Address] = {}
        """device -> its address, from a hello that echoed a challenge of this node; datagrams naming
        the device from anywhere else are dropped unchecked, and answers go only here."""
        self._learned_heard: dict[str, float] = {}
        """device -> when (monotonic) a message last came from its learned address."""
        self._challenges: collections.deque[str] = collections.deque(maxlen=CHALLENGES_KEPT)
        self._their_challenges: dict[str, str] = {}
        """device -> the last challenge heard from it, echoed in each hello."""
        self._greeted: dict[str, float] = {}
        """device -> when (monotonic) it was last sent a hello of its own (at most one per hello)."""
        self._asked: dict[str, tuple[int, float]] = {}
        self._their_last: dict[str, int] = {}
        """device -> the last number its hello said its ledger gave (catch-up goes on until there)."""
        self._sent: dict[str, int] = {}
        self.dropped = 0
        """Datagrams dropped unread (inbox full) since start."""

    @property
    def address(self) -> Address:
        """The address the node listens on (its port is ``[lan] port``, or the one the system gave)."""
        assert self._sock is not None, "start() first"
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> Self:
        """Note where this ledger's numbers stand, bind the port, join the group, start the two
        threads. A port in use is an ``OSError``; a ledger that cannot be opened a ``LedgerError``."""
        lan = self.config.lan
        with Ledger(self.config.ledger_path, check=False) as ledger:  # before any scan after start
            epoch = ledger.lan_epoch()
            now = max(self._clock(), ledger.time_floor or 0.0, ledger.last_sync or 0.0)
            start = ledger.lan_start(now)  # fsynced: no message of this start repeats an earlier one's
            self._last_sent = ledger.last_seq  # earlier ones: peers ask for them (catch-up)
        self._sender = gossip.Sender(self.key, merchant=self.config.merchant_id, epoch=epoch, start=start)
        self._challenges.append(secrets.token_hex(8))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", lan.port))  # no SO_REUSEADDR: a second node on one port is refused
            sock.settimeout(TICK_SECONDS)
            if lan.discovery:
                self._join(sock)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        for name, work in (("lan-receive", self._receive), ("lan-work", self._work)):
            thread = threading.Thread(target=work, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _join(self, sock: socket.socket) -> None:
        """Join the multicast group on the default interface; where that fails (no multicast route),
        the node goes on with pinned peers and says so."""
        group = self.config.lan.group
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        try:
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as exc:
            event(log, "lan_discovery_off", logging.WARNING, group=group, error=exc.strerror or str(exc))

    def announce(self) -> None:
        """A redemption was committed: have it sent (from the scan thread: never blocks). While a
        send is already due this costs nothing more: the worker is not woken again."""
        if self._wake.is_set():
            return
        self._wake.set()
        with contextlib.suppress(queue.Full):  # the worker sends new records at its next tick anyway
            self._inbox.put_nowait(_WAKE)

    def close(self) -> None:
        """Send what is new, then stop both threads and release the port."""
        self._stop.set()
        self.announce()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the receiving thread ---------------------------------------------------------------

    def _receive(self) -> None:
        sock = self._sock
        assert sock is not None
        pace = Budget(MAX_DATAGRAMS_PER_SECOND, self._monotonic)
        while not self._stop.is_set():
            if not pace.take():  # meanwhile the kernel drops what does not fit its buffer
                time.sleep(1 / MAX_DATAGRAMS_PER_SECOND)
                continue
            try:
                data, sender = sock.recvfrom(gossip.MAX_DATAGRAM + 1)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                self._inbox.put_nowait((data, sender[:2]))
            except queue.Full:
                self.dropped += 1
                self._throttle.log("lan_dropped", "inbox_full", address=sender[0])

    # -- the working thread -----------------------------------------------------------------

    def _work(self) -> None:
        """Check and record what arrives; on each tick send what is new, hellos and asks."""
        with Ledger(self.config.ledger_path, check=False) as ledger:
            ledger.lan_connection()
            self._ledger = ledger
            self._heard = ledger.lan_heard()
            self._guarded(self._load_peers)  # before the first datagram is judged
            next_tick = next_hello = next_stats = next_prune = last_send = 0.0
            next_peers = self._monotonic() + PEERS_REFRESH_SECONDS
            while True:
                stopping = self._stop.is_set()
                wait = TICK_SECONDS
                if self._wake.is_set():  # a send is due: at once, or at the end of the gap
                    wait = max(0.0, last_send + SEND_GAP_SECONDS - self._monotonic())
                try:
                    item = None if stopping else self._inbox.get(timeout=wait)
                except queue.Empty:
                    item = None
                if isinstance(item, tuple):
                    self._guarded(self._handle, *item)
                now = self._monotonic()
                if now >= next_peers:
                    self._guarded(self._load_peers)
                    next_peers = now + PEERS_REFRESH_SECONDS
                due = self._wake.is_set() and now >= last_send + SEND_GAP_SECONDS
                if due or now >= next_tick or stopping:
                    self._wake.clear()  # before reading: a redemption committed after it wakes again
                    self._guarded(self._send_new)
                    next_tick, last_send = now + TICK_SECONDS, now
                if now >= next_hello and self._peers and not stopping:
                    self._guarded(self._hello_all)
                    next_hello = now + self.config.lan.hello_seconds
                if now >= next_stats or stopping:
                    self._guarded(self._flush_stats)
                    next_stats = now + STATS_EVERY_SECONDS
                if now >= next_prune:
                    self._guarded(self._prune)
                    next_prune = now + PRUNE_EVERY_SECONDS
                if stopping:
                    return

    def _guarded(self, step: Callable[..., object], *args: object) -> None:
        """One step of the worker; a failure (a locked ledger, a socket error) is logged, and the
        worker goes on: the LAN must never stop the counter."""
        try:
            step(*args)
        except Exception as exc:
            self._throttle.log("lan_failed", type(exc).__name__, error=str(exc)[:200])

    def _load_peers(self) -> None:
        keys = {}
        for device_id, jwk in self._ledger.peers().items():
            if device_id == self.config.device_id:
                continue
            try:
                keys[device_id] = parse_public_jwk(jwk)
            except DeviceTokenError as exc:
                self._throttle.log("lan_peer_key_refused", "bad_key", device=device_id, error=str(exc))
        self._peers = keys
        for device_id in set(self._learned) - set(keys):  # revoked at a sync: no longer told anything
            self._forget(device_id)

    def _learn(self, device_id: str, address: Address) -> None:
        self._learned[device_id] = address
        self._learned_heard[device_id] = self._monotonic()
        event(log, "lan_peer_learned", device=device_id, address=f"{address[0]}:{address[1]}")

    def _forget(self, device_id: str) -> None:
        self._learned.pop(device_id, None)
        self._learned_heard.pop(device_id, None)

    def _forget_silent(self) -> None:
        """Let go of learned addresses nothing came from for a while (the peer may have moved)."""
        silence = max(FORGET_SECONDS, 3 * self.config.lan.hello_seconds)
        now = self._monotonic()
        for device_id, heard in list(self._learned_heard.items()):
            if now - heard > silence:
                self._forget(device_id)

    def _send(self, datagram: bytes, address: Address) -> bool:
        assert self._sock is not None
        try:
            self._sock.sendto(datagram, address)
            return True
        except OSError as exc:  # no route, a peer's host gone: UDP, so the catch-up makes up for it
            self._throttle.log("lan_send_failed", "send_failed", address=address[0], error=str(exc))
            return False

    def _targets(self) -> dict[Address, str | None]:
        """Where to send records: every address heard from a peer, and every pinned one."""
        targets: dict[Address, str | None] = {address: None for address in self.config.lan.peers}
        for device_id, address in self._learned.items():
            targets[address] = device_id
        return targets

    def _send_new(self) -> None:
        """This device's redemptions not sent yet, to every peer it knows of."""
        rows, through = self._ledger.own_records(self._last_sent, max_rows=MAX_ROWS_PER_ANSWER)
        if not rows and through == self._last_sent:
            return
        if self._peers or self.config.lan.peers:
            for page, after, until in gossip.pages(rows, self._last_sent, through):
                datagram = self._records(page, after, until)
                for address, device_id in self._targets().items():
                    if self._send(datagram, address) and device_id is not None:
                        self._sent[device_id] = self._sent.get(device_id, 0) + len(page)
        self._last_sent = through

    def _records(self, rows: list[LanRecord], after: int, through: int) -> bytes:
        return gossip.records(self._sender, rows=rows, after=after, through=through)

    def _hello(self) -> bytes:
        wants = set(self._their_challenges) - set(self._learned)
        return gossip.hello(
            self._sender,
            last_seq=self._ledger.last_seq,
            challenge=self._challenges[-1],
            echoes=self._their_challenges,
            wants=wants,
        )

    def _hello_all(self) -> None:
        """A hello with a new challenge to the group, the pinned addresses and the learned ones (so
        a peer not reached by multicast keeps hearing this node, and keeps its address learned)."""
        self._forget_silent()
        self._challenges.append(secrets.token_hex(8))
        datagram = self._hello()
        if self.config.lan.discovery:
            self._send(datagram, (self.config.lan.group, self.config.lan.port))
        for address in dict.fromkeys([*self.config.lan.peers, *self._learned.values()]):
            self._send(datagram, address)

    def _greet(self, device_id: str, address: Address) -> None:
        """A hello to one peer, at most one per ``hello_seconds``: so it can echo this node's
        challenge (and learn its address) without waiting for the next round. The only datagram
        ever sent to an address not learned: one hello, whatever arrives from there."""
        now = self._monotonic()
        if now - self._greeted.get(device_id, -math.inf) < self.config.lan.hello_seconds:
            return
        self._greeted[device_id] = now
        self._send(self._hello(), address)

    def _flush_stats(self) -> None:
        if self._sent:
            sent, self._sent = self._sent, {}
            self._ledger.note_sent(sent)

    def _prune(self) -> None:
        if self._ledger.prune_time is not None:
            self._ledger.prune_lan(self._ledger.prune_time, self.config.leeway_seconds)

    # -- what arrives -----------------------------------------------------------------------

    def _handle(self, data: bytes, address: Address) -> None:
        try:
            message = gossip.read(
                data,
                merchant=self.config.merchant_id,
                peers=self._peers,
                may_come_from=lambda device_id: self._learned.get(device_id, address) == address,
                may_verify=self._checks.take,
            )
            if not self._is_new(message):
                return  # the same datagram twice (multicast and unicast): nothing to say
        except gossip.Dropped as exc:
            if exc.device_id == self.config.device_id:
                return  # our own hello, looped back
            self._throttle.log(
                "lan_dropped", exc.reason, address=address[0], device=exc.device_id, error=exc.detail[:200]
            )
            return
        device_id = message.device_id
        if self._learned.get(device_id) == address:
            self._learned_heard[device_id] = self._monotonic()
        inserted, watermark = self._ledger.note_peer(
            device_id,
            epoch=message.epoch,
            address=f"{address[0]}:{address[1]}",
            heard_at=self._clock(),
            counter=message.counter,
            records=message.records,
            span=(message.after, message.through) if message.kind == gossip.RECORDS else None,
        )
        if message.kind == gossip.HELLO:
            self._hear_hello(message, address, watermark)
        elif message.kind == gossip.ASK:
            learned = self._learned.get(device_id)
            if message.to == self.config.device_id and learned is not None:
                self._answer(device_id, message.after, learned)
        else:
            if inserted:
                event(log, "lan_records", device=device_id, records=inserted, watermark=watermark)
                if self.on_record is not None:
                    self.on_record(device_id, inserted)
            behind = max(message.through, self._their_last.get(device_id, 0)) > watermark
            learned = self._learned.get(device_id)
            if behind and learned is not None:  # a page was lost, or there are more: ask on
                self._ask(device_id, watermark, learned)

    def _hear_hello(self, message: gossip.Message, address: Address, watermark: int) -> None:
        """Learn the sender's address if its hello echoes a recent challenge of this node (a replayed
        hello cannot); greet it if it waits for this node's echo, or is not learned yet; catch up."""
        device_id, me = message.device_id, self.config.device_id
        self._their_challenges[device_id] = message.challenge
        self._their_last[device_id] = message.last_seq
        learned = self._learned.get(device_id)
        echoed = message.echoes.get(me) in self._challenges  # else it just started, or missed ours
        if learned is None and echoed:
            self._learn(device_id, address)
            learned = address
        if learned is None or me in message.wants or not echoed:
            self._greet(device_id, learned or address)
        if learned is not None and message.last_seq > watermark:
            self._ask(device_id, watermark, learned)

    def _is_new(self, message: gossip.Message) -> bool:
        """Whether ``message`` is newer than the last heard from its device (this process or an earlier
        one, of either counter: the ledger keeps the last); the same one again is ``False``, an older
        one ``Dropped`` as a replay."""
        last = self._heard.get(message.device_id)
        if last is not None and message.counter <= last:
            if message.counter == last:
                return False
            raise gossip.Dropped("replayed", "not newer than the last message heard", message.device_id)
        self._heard[message.device_id] = message.counter
        return True

    def _ask(self, device_id: str, after: int, address: Address) -> None:
        """Ask ``device_id`` for its records after ``after``; the same question again only after
        ``ASK_AGAIN_SECONDS`` (its answer may still be on its way), the next page at once."""
        now = self._monotonic()
        asked = self._asked.get(device_id)
        if asked is not None and asked[0] == after and now - asked[1] < ASK_AGAIN_SECONDS:
            return
        self._asked[device_id] = (after, now)
        self._send(gossip.ask(self._sender, to=device_id, after=after), address)

    def _answer(self, device_id: str, after: int, address: Address) -> None:
        """What this device has numbered after ``after``, in pages, to the asker's learned address."""
        rows, through = self._ledger.own_records(after, max_rows=MAX_ROWS_PER_ANSWER)
        for page, start, until in gossip.pages(rows, after, through):
            if self._send(self._records(page, start, until), address):
                self._sent[device_id] = self._sent.get(device_id, 0) + len(page)


def open_lan(config: DeviceConfig, **kwargs: object) -> Lan | None:
    """The started node for ``run``, or ``None`` when ``[lan]`` is off or there is no device key to
    sign with (said in one log line); a port in use is said too, and the counter scans on without."""
    if not config.lan.enabled:
        return None
    if config.device_key is None:  # not enrolled: no peers either (a sync brings them, with the key)
        return None
    try:
        key = SigningKey.load(config.device_id, config.device_key)
    except (OSError, ValueError) as exc:
        event(log, "lan_off", logging.WARNING, error=f"device_key: {exc}")
        return None
    try:
        return Lan(config, key, **kwargs).start()  # type: ignore[arg-type]
    except OSError as exc:
        event(log, "lan_off", logging.ERROR, error=f"[lan] port {config.lan.port}: {exc.strerror or exc}")
        return None
