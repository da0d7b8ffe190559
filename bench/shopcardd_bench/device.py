"""Per-frame cost on the counter: decode, verify and record (median and p95), per decoder and
frame size, and accepted scans per second end to end.

Frames are real vouchers' QR codes rendered as a camera sees them (blur and sensor noise) at
640x480 and 1280x720 grayscale; "record" is a durable commit to a ledger in a temporary
folder (WAL, synchronous=FULL), so its figure depends on this machine's disk. Each figure
is the median over several runs; the benchmark asserts nothing.

A second table reads the degraded set (``degraded_looks``: 40 frames of a camera at its worst,
640x480, the same frames every time) with each library alone (first look only) and as the
counter reads it (the configured decoder with its second look: denoised, then the other
library): how many frames each reads, and the decode time per frame (median/p95), with the
counter's median as a share of zxing-cpp's alone in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shopcardd_commands.commandline import whole_number

if TYPE_CHECKING:
    from shopcardd_device.decoders.base import Decoder, Gray
    from shopcardd_device.runtime import Runtime

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", type=whole_number(1), default=5, help="runs per case; figures are their median (default 5)"
    )
    parser.add_argument(
        "--frames", type=whole_number(1), default=40, help="frames (distinct vouchers) per run (default 40)"
    )
    parser.add_argument(
        "--decoder", action="append", choices=["zxing", "zbar"], help="decoder(s) to measure (default both)"
    )
    parser.add_argument(
        "--size", action="append", choices=list(SIZES), help="frame size(s) to measure (default both)"
    )
    parser.add_argument(
        "--degraded-only", action="store_true", help="only the degraded-set table (read rate and time)"
    )


@dataclass
class Stages:
    """Seconds per frame for each stage of one run."""

    decode: list[float]
    verify: list[float]
    record: list[float]
    empty: list[float]
    scans_per_second: float

    @property
    def total(self) -> list[float]:
        return [sum(parts) for parts in zip(self.decode, self.verify, self.record, strict=True)]


STAGES = ("decode", "verify", "record", "total", "empty")


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def _median_p95(results: list[Stages], stage: str) -> str:
    """``median/p95`` of one stage in milliseconds: each run's figure, then the median over the runs."""
    runs = [getattr(s, stage) for s in results]
    median = statistics.median(statistics.median(values) for values in runs) * 1000.0
    p95 = statistics.median(_p95(values) for values in runs) * 1000.0
    return f"{median:.2f}/{p95:.2f}"


def _frames(mint: Any, size: tuple[int, int], count: int, seed: int) -> list[Gray]:
    from shopcardd_bench.synthetic import Look, render

    return [render(mint(), Look(size=size, blur=1.2, noise=6.0, seed=seed + i)) for i in range(count)]


def _one_run(device: Runtime, decoder: Decoder, frames: list[Gray], e2e_frames: list[Gray]) -> Stages:
    import numpy as np

    from shopcardd_bench.synthetic import ScriptedSource
    from shopcardd_device.scanner import Scan

    counter = device.counter
    stages = Stages([], [], [], [], 0.0)
    clock = time.perf_counter
    for frame in frames:
        start = clock()
        codes = decoder.decode(frame)
        decoded = clock()
        if not codes:
            continue  # an unread frame has no verify or record cost; counted in the table's "read" column
        now = counter.time()
        verdict = counter.judge(codes[0], now)  # Counter.scan, in its two timed halves
        verified = clock()
        counter.commit(codes[0], verdict, now)
        recorded = clock()
        stages.decode.append(decoded - start)
        stages.verify.append(verified - decoded)
        stages.record.append(recorded - verified)
    empty = np.full(frames[0].shape, 90, np.uint8)
    for _ in range(len(frames)):
        start = clock()
        decoder.decode(empty)
        stages.empty.append(clock() - start)
    accepted: list[Scan] = []
    scanner = device.scanner(ScriptedSource(e2e_frames), decoder, on_scan=accepted.append)
    start = clock()
    scanner.run()  # the loop as the counter runs it, minus the camera
    judged = [s for s in accepted if not s.repeated]  # a repeat is not a redemption
    stages.scans_per_second = sum(s.verdict.is_accepted for s in judged) / (clock() - start)
    return stages


def run(args: argparse.Namespace) -> int:
    import logging
    import tempfile
    from pathlib import Path

    from shopcardd_device.config import DeviceConfig
    from shopcardd_device.decoders import open_decoder
    from shopcardd_device.runtime import open_counter
    from shopcardd_voucher import KeySet, SigningKey, issue

    logging.getLogger("shopcardd_device").setLevel(logging.ERROR)  # no log line per scan in the figures
    decoders = args.decoder or ["zxing", "zbar"]
    sizes = args.size or list(SIZES)
    key = SigningKey.generate("k1")
    serial = iter(range(10**9))

    def mint() -> str:
        return issue(key, deal="d-flash-01", merchant="m-bench", user=f"u-{next(serial):06d}", ttl=86_400)

    if args.degraded_only:
        return _degraded(mint, args.runs)
    print(f"shopcardd-bench device: {args.runs} runs x {args.frames} frames (blur 1.2 px, noise 6), EdDSA")
    print(
        "per-frame milliseconds as median/p95, each the median over the runs; total = decode+verify+record;"
        " 'empty' = a frame with no code"
    )
    header = f"{'decoder':<7} {'frame':<9} {'read':>5} " + " ".join(f"{name:>13}" for name in STAGES)
    header += f" {'scans/s':>8}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="shopcardd-bench-") as tmp:
        jwks = Path(tmp) / "jwks.json"
        jwks.write_text(KeySet([key.verification_key()]).to_json())
        for decoder_name in decoders:
            decoder = open_decoder(decoder_name)
            for size_name in sizes:
                data = Path(tmp) / f"{decoder_name}-{size_name}"
                config = DeviceConfig.from_dict(
                    {
                        "device_id": "bench",
                        "merchant_id": "m-bench",
                        "data_dir": str(data),
                        "keyset": str(jwks),
                    },
                    base=Path(tmp),
                )
                results: list[Stages] = []
                read = 0
                with open_counter(config) as device:
                    for run_no in range(args.runs):
                        frames = _frames(mint, SIZES[size_name], args.frames, seed=run_no * 1000)
                        e2e = _frames(mint, SIZES[size_name], args.frames, seed=run_no * 1000 + 500)
                        stages = _one_run(device, decoder, frames, e2e)
                        read += len(stages.decode)
                        if stages.decode:
                            results.append(stages)
                if not results:
                    print(f"{decoder_name:<7} {size_name:<9} read no frame")
                    continue

                rate = statistics.median(s.scans_per_second for s in results)
                share = read / (args.runs * args.frames)
                cells = " ".join(f"{_median_p95(results, stage):>13}" for stage in STAGES)
                print(f"{decoder_name:<7} {size_name:<9} {share:>5.0%} {cells} {rate:>8.1f}")
            decoder.close()
    print()
    return _degraded(mint, args.runs)


READERS = {
    "zxing alone": ("zxing", False),
    "zbar alone": ("zbar", False),
    "counter": ("auto", True),
}
"""The degraded table's rows: (decoder name, second look)."""


def _degraded(mint: Any, runs: int) -> int:
    """Read rate and decode time on the degraded set, per library alone and as the counter reads."""
    from shopcardd_bench.synthetic import DEGRADED_KINDS, degraded_looks, render
    from shopcardd_device.decoders import open_decoder
    from shopcardd_device.errors import ConfigError

    looks = degraded_looks()
    tokens = [mint() for _ in looks]
    frames = [render(token, look) for token, look in zip(tokens, looks, strict=True)]
    decoders = {}
    for row, (name, second_look) in READERS.items():
        try:
            decoders[row] = open_decoder(name, second_look=second_look)
        except ConfigError as exc:
            print(f"{row}: not measured ({exc})")
    pairs = list(enumerate(zip(tokens, frames, strict=True)))
    read = {  # the first pass also warms each decoder up
        row: {i for i, (token, frame) in pairs if decoder.decode(frame) == [token]}
        for row, decoder in decoders.items()
    }
    medians: dict[str, list[float]] = {row: [] for row in decoders}
    p95s: dict[str, list[float]] = {row: [] for row in decoders}
    clock = time.perf_counter
    for _ in range(runs):
        for row, decoder in decoders.items():  # interleaved, so a busy moment hits every reader
            seconds = []
            for frame in frames:
                start = clock()
                decoder.decode(frame)
                seconds.append(clock() - start)
            medians[row].append(statistics.median(seconds))
            p95s[row].append(_p95(seconds))
    for decoder in decoders.values():
        decoder.close()
    print(
        f"degraded set: {len(frames)} frames, 640x480, {', '.join(DEGRADED_KINDS)} in turn; {runs} runs;"
        " decode milliseconds per frame as median/p95"
    )
    header = f"{'reader':<12} {'read':>7} {'decode':>13} {'vs zxing':>9}  missed"
    print(header)
    print("-" * len(header))
    base = statistics.median(medians["zxing alone"]) if "zxing alone" in medians else None
    for row, hits in read.items():
        median = statistics.median(medians[row])
        cell = f"{median * 1000:.2f}/{statistics.median(p95s[row]) * 1000:.2f}"
        ratio = f"{median / base:.2f}" if base else "-"
        lost = (i for i in range(len(frames)) if i not in hits)
        missed = ", ".join(f"{i}:{DEGRADED_KINDS[i % len(DEGRADED_KINDS)]}" for i in lost)
        print(f"{row:<12} {len(hits):>3}/{len(frames):<3} {cell:>13} {ratio:>9}  {missed or '-'}")
    either = set().union(*(read.get(row, set()) for row in ("zxing alone", "zbar alone")))
    print(f"{'either alone':<12} {len(either):>3}/{len(frames):<3}")
    return 0
