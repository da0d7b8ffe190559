"""The shop LAN: the gossip delay between two counters, and what gossip costs the scan loop.

Two counters of one shop on loopback (pinned addresses, so no multicast is needed), each with its
own ledger, device key and the other as its peer, as a sync would have left them; no backend.

- Gossip delay: a voucher is redeemed at counter A through the scan loop's own ``scan`` (judged,
  committed, and A's node told, by the rule the counter's runtime applies after every scan), and
  the clock runs from there until counter B has committed the record to its ledger. Both
  counters run in this process.
  p50/p99 over ``--vouchers`` vouchers, one at a time and 40 ms apart, as redemptions at a till
  are (a burst of back-to-back redemptions is sent in batches 20 ms apart: ``SEND_GAP_SECONDS``).
- Scan loop: the milliseconds per frame of the scan loop (decode, verify, commit; every frame
  a new voucher, so every frame is a redemption to gossip) at counter A with gossip off, on, and
  on while another process floods A's port with forged records at full speed, in interleaved
  runs of the same process (after a warm-up run);
  B is another process (``shopcardd-device run``) on a CPU of its own (A on the others), as on
  its own till: on one machine, B's checking and committing would otherwise count against A.
  The ratios on/off and flood/off (medians over the runs of each run's ratio) are the figures
  to read; the budget is at most 1.05 for on/off (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shopcardd_commands.commandline import whole_number
from shopcardd_voucher import KeySet, SigningKey, issue
from shopcardd_voucher.device_auth import public_jwk

from .figures import percentile

if TYPE_CHECKING:
    from shopcardd_device.decoders.base import Gray
    from shopcardd_device.scanner import Scanner

MERCHANT = "m-bench-shop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vouchers", type=whole_number(1), default=200, help="vouchers gossiped for the delay (default 200)"
    )
    parser.add_argument(
        "--runs", type=whole_number(1), default=6, help="scan-loop runs per mode, alternating (default 6)"
    )
    parser.add_argument(
        "--frames", type=whole_number(1), default=40, help="frames (distinct vouchers) per run (default 40)"
    )


def free_port() -> int:
    """A UDP port free on this host now (a test or the bench pins its counters to such ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_shop(
    folder: Path,
    devices: Sequence[str],
    *,
    voucher_keys: KeySet,
    merchant: str = MERCHANT,
    lan: Mapping[str, str] | None = None,
    extra: str = "",
) -> dict[str, Path]:
    """The counters of one shop in ``folder``, as enrolment and a first sync leave them: each its
    own folder with ``device.toml`` (plus ``extra`` at the top and ``lan[device]`` in ``[lan]``),
    an Ed25519 device key, and a ledger holding the voucher key set and the other counters as its
    peers. Returns each device's config path. No backend is involved."""
    from shopcardd_device.ledger import Ledger, SyncRecord

    keys = {device: SigningKey.generate(device) for device in devices}
    (folder / "jwks.json").write_text(voucher_keys.to_json())
    paths = {}
    now = time.time()
    for device in devices:
        home = folder / device
        home.mkdir(parents=True)
        (home / "device.private.pem").write_bytes(keys[device].to_pem())
        (home / "device.private.pem").chmod(0o600)
        config = home / "device.toml"
        config.write_text(
            f'device_id = "{device}"\nmerchant_id = "{merchant}"\ndata_dir = "data"\n'
            f'keyset = "../jwks.json"\ndevice_key = "device.private.pem"\n{extra}\n'
            f"[lan]\n{(lan or {}).get(device, '')}\n"
        )
        peers = {other: public_jwk(keys[other]) for other in devices if other != device}
        record = SyncRecord(
            uploaded_through=0,
            verdicts=[],
            keys=voucher_keys,
            keys_issued_at=now,
            keys_valid_until=now + 86_400,
            revoked_vouchers=[],
            revoked_deals=[],
            revocations_watermark=None,
            peers=peers,
            server_time=now,
        )
        with Ledger(home / "data" / "ledger.sqlite3") as ledger:
            ledger.apply_sync(record, 60)
        paths[device] = config
    return paths


def pinned_on_loopback(ports: Mapping[str, int], hello_seconds: float = 0.5) -> dict[str, str]:
    """Each counter's ``[lan]`` table: its port, the others pinned on loopback, no multicast."""
    return {
        device: f"port = {port}\ndiscovery = false\nhello_seconds = {hello_seconds}\npeers = ["
        + ", ".join(f'"127.0.0.1:{other}"' for name, other in ports.items() if name != device)
        + "]"
        for device, port in ports.items()
    }


def _gossip_delay(configs: Mapping[str, Path], mint: Iterator[str], vouchers: int) -> list[float]:
    """Seconds from A's commit to B's, per voucher."""
    from shopcardd_bench.synthetic import ScriptedSource
    from shopcardd_device.config import DeviceConfig
    from shopcardd_device.lan import SEND_GAP_SECONDS
    from shopcardd_device.runtime import open_counter
    from shopcardd_device.scanner import Scan

    config_a, config_b = (DeviceConfig.load(configs[name]) for name in ("till-a", "till-b"))
    recorded = threading.Event()
    moments: list[float] = []
    committed: list[float] = []

    def on_record(device: str, count: int) -> None:
        moments.append(time.perf_counter())
        recorded.set()

    def on_scan(scan: Scan) -> None:  # called once A committed the scan and told its node
        committed.append(time.perf_counter())
        if not scan.verdict.is_accepted:
            raise RuntimeError("the bench's voucher was not accepted at till-a")

    delays = []
    with (
        open_counter(config_b, on_lan_record=on_record) as till_b,
        open_counter(config_a) as till_a,
    ):
        if till_b.lan is None or till_a.lan is None:  # B listens before A sends
            raise RuntimeError("the shop LAN did not start at both tills (see the lan_off log line)")
        scanner = till_a.scanner(ScriptedSource([]), None, on_scan=on_scan)
        for number in range(vouchers + 1):  # the first one warms both up, and is not counted
            recorded.clear()
            time.sleep(2 * SEND_GAP_SECONDS)  # redemptions seconds apart, as at a till: none batched
            scanner.scan(next(mint), origin="bench")
            if not recorded.wait(10):
                raise RuntimeError("till-b did not record till-a's redemption within 10 s")
            if number:
                delays.append(moments[-1] - committed[-1])
    return delays


def _frame_times(scanner: Scanner, frames: list[Gray]) -> list[float]:
    """Seconds of ``Scanner.process`` per frame (the LAN told after each redemption, when on)."""
    from shopcardd_device.frames.base import Frame

    times = []
    for image in frames:
        start = time.perf_counter()
        scanner.process(Frame(image=image, origin="bench"))
        times.append(time.perf_counter() - start)
    return times


MODES = ("off", "on", "flood")
FLOOD = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
junk = [bytes.fromhex(sys.argv[2]), b"not.a.message", bytes(64)]
while True:
    for datagram in junk:
        sock.sendto(datagram, ("127.0.0.1", int(sys.argv[1])))
"""
"""The flooder: as fast as one Python process sends, a forged record naming till-b from another
address (dropped unchecked once till-a learned till-b's address; a check each, while the budget
lasts, before), and junk."""


@contextlib.contextmanager
def _flood(configs: Mapping[str, Path], cpus: set[int]) -> Iterator[None]:
    """A host of the LAN floods till-a's port with junk while the block runs (on till-b's CPU)."""
    from shopcardd_device import gossip
    from shopcardd_device.config import DeviceConfig
    from shopcardd_device.ledger import LanRecord

    port = DeviceConfig.load(configs["till-a"]).lan.port
    row = LanRecord("v-flood", "d-lan", time.time(), int(time.time()) + 60, 1)
    forger = gossip.Sender(SigningKey.generate("till-b"), merchant=MERCHANT, epoch="e", start=1)
    forged = gossip.records(forger, rows=[row], after=0, through=1)
    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(port), forged.hex()],
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        yield
    finally:
        flooder.kill()
        flooder.wait()


def _scan_loop(
    configs: Mapping[str, Path], mint: Iterator[str], runs: int, frames: int
) -> dict[str, list[list[float]]]:
    """Per-frame seconds at till-a: gossip off, on, and on under a flood, the runs interleaved;
    till-b (and the flooder) are processes of their own, on a CPU of their own."""
    from shopcardd_bench.synthetic import ScriptedSource
    from shopcardd_device.config import DeviceConfig
    from shopcardd_device.decoders import open_decoder
    from shopcardd_device.runtime import open_counter

    from .device import _frames

    config_a = DeviceConfig.load(configs["till-a"])
    gossip_off = dataclasses.replace(config_a, lan=dataclasses.replace(config_a.lan, enabled=False))
    command = [
        str(Path(sys.executable).parent / "shopcardd-device"),
        "run",
        "--config",
        str(configs["till-b"]),
    ]
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}  # till-b's LEDs: no Pi here
    cpus = sorted(os.sched_getaffinity(0))
    own, other = (set(cpus[:-1]), {cpus[-1]}) if len(cpus) > 1 else (set(cpus), set(cpus))
    os.sched_setaffinity(0, own)  # till-b's work (checking, committing) is its own till's, not A's
    till_b = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, other),
    )
    results: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
    try:
        with open_decoder("zxing") as decoder:
            with open_counter(gossip_off) as till_a:  # not counted: caches, the decoder's first frames
                warm_up = _frames(lambda: next(mint), (640, 480), frames, seed=99_999)
                _frame_times(till_a.scanner(ScriptedSource([]), decoder), warm_up)
            for turn in range(runs):  # each turn the modes in another order: a drift cancels out
                for mode in MODES[turn % 3 :] + MODES[: turn % 3]:
                    images = _frames(lambda: next(mint), (640, 480), frames, seed=len(results[mode]) * 1000)
                    with open_counter(config_a if mode != "off" else gossip_off) as till_a:
                        scanner = till_a.scanner(ScriptedSource([]), decoder)  # starts the node
                        with _flood(configs, other) if mode == "flood" else contextlib.nullcontext():
                            results[mode].append(_frame_times(scanner, images))
    finally:
        os.sched_setaffinity(0, set(cpus))
        if till_b.stdin is not None:
            till_b.stdin.close()
        till_b.wait(timeout=30)
    return results


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("shopcardd_device").setLevel(logging.ERROR)
    key = SigningKey.generate("k1")
    serial = iter(range(10**9))

    def mints() -> Iterator[str]:
        while True:
            yield issue(key, deal="d-lan", merchant=MERCHANT, user=f"u-{next(serial):06d}", ttl=86_400)

    mint = mints()
    with tempfile.TemporaryDirectory(prefix="shopcardd-bench-lan-") as tmp:
        ports = {"till-a": free_port(), "till-b": free_port()}
        configs = make_shop(
            Path(tmp),
            list(ports),
            voucher_keys=KeySet([key.verification_key()]),
            lan=pinned_on_loopback(ports),
            extra='log_level = "error"\n[camera]\nsource = "keyboard"  # till-b waits on stdin\n',
        )
        delays = _gossip_delay(configs, mint, args.vouchers)
        loop = _scan_loop(configs, mint, args.runs, args.frames)
    ms = [d * 1000 for d in delays]
    print(f"shopcardd-bench lan: two counters on loopback, EdDSA device keys, {len(ms)} vouchers gossiped")
    print(f"{'gossip delay (A committed -> B committed)':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'':<44} {percentile(ms, 0.5):>8.2f} {percentile(ms, 0.99):>8.2f} {max(ms):>8.2f}")
    print()
    medians = {mode: statistics.median(t for run in runs for t in run) * 1000 for mode, runs in loop.items()}
    frames = sum(len(run) for run in loop["on"])
    print(
        f"scan loop at A ({args.runs} runs x {args.frames} frames a mode, 640x480, each frame a redemption;"
        " B on a CPU of its own)"
    )
    print(f"{'gossip':<8} {'median ms/frame':>16} {'frames':>8}   (flood: gossip on, junk at full speed)")
    for mode in MODES:
        print(f"{mode:<8} {medians[mode]:>16.2f} {frames:>8}")
    for mode in MODES[1:]:
        turns = zip(loop[mode], loop["off"], strict=True)
        ratios = [statistics.median(run) / statistics.median(off) for run, off in turns]
        name = f"ratio {mode}/off"
        print(f"{name:<14} {statistics.median(ratios):>10.3f}  (median over {len(ratios)} turns)")
    return 0
