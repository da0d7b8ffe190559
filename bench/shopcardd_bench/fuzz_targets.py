"""Coverage-guided fuzz targets (atheris over libFuzzer), one process per run.

Run by ``shopcardd-bench fuzz counter|voucher`` (which makes the seed corpus and reads the
figures); libFuzzer never returns, so each run is a process of its own:
``python -m shopcardd_bench.fuzz_targets TARGET [libFuzzer flags] CORPUS``.

- ``counter``: bytes in as a camera frame (``frame_of``: two bytes of width, then gray pixels)
  -> the counter's decoder (with its second look) -> the counter's verdict (``policy.judge``).
- ``voucher``: bytes in as the text of a scanned code -> ``shopcardd_voucher.verify``.

Either must end in a verdict from the closed list, with a detail that is one printable line;
anything else (an exception, a verdict without a reason) is a crash that libFuzzer saves.
The key is fixed (``fuzz.fuzz_key``), so a saved crash replays in a later run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final

import atheris

with atheris.instrument_imports(include=["shopcardd_voucher", "shopcardd_device"]):
    import numpy as np

    from shopcardd_bench.fuzz import MERCHANT, NOW, fuzz_key
    from shopcardd_device.decoders import open_decoder
    from shopcardd_device.errors import DecoderError
    from shopcardd_device.inputs import safe_code
    from shopcardd_device.policy import ClockState, TrustedTime, judge
    from shopcardd_voucher import KeySet, Reason, Verdict, verify

MAX_WIDTH: Final = 1024


def frame_of(data: bytes) -> np.ndarray | None:
    """A gray frame from fuzz bytes: a big-endian width (1-1024), then the pixels row by row."""
    if len(data) < 3:
        return None
    width = min(MAX_WIDTH, max(1, int.from_bytes(data[:2], "big")))
    height = (len(data) - 2) // width
    if not height:
        return None
    return np.frombuffer(data, np.uint8, width * height, 2).reshape(height, width).copy()


class NothingRecorded:
    """Ledger facts of a counter that has redeemed and revoked nothing."""

    def is_revoked(self, voucher_id: str, deal: str) -> bool:
        return False

    def redeemed_at(self, voucher_id: str) -> float | None:
        return None


def check(verdict: Verdict) -> None:
    if not isinstance(verdict.reason, Reason):
        raise AssertionError(f"not a reason code: {verdict.reason!r}")
    if not safe_code(verdict.detail).isprintable():
        raise AssertionError(f"detail is not one printable line: {verdict.detail!r}")


def counter_target() -> Callable[[bytes], None]:
    keys = KeySet([fuzz_key().verification_key()])
    decoder = open_decoder("zxing")
    time = TrustedTime(NOW, ClockState.TRUSTED, NOW, NOW)
    facts = NothingRecorded()

    def one(data: bytes) -> None:
        frame = frame_of(data)
        if frame is None:
            return
        try:
            texts = decoder.decode(frame)
        except DecoderError:
            return  # a frame the library cannot take: the scanner skips it, as it should
        for text in texts:
            check(judge(text, keys=keys, merchant=MERCHANT, facts=facts, time=time, leeway=60))

    return one


def voucher_target() -> Callable[[bytes], None]:
    keys = KeySet([fuzz_key().verification_key()])

    def one(data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")  # a scanner's line, as the counter keeps it
        check(verify(text, keys, now=NOW, merchant=MERCHANT))
        check(verify(data, keys, now=NOW, merchant=MERCHANT))

    return one


TARGETS: Final = {"counter": counter_target, "voucher": voucher_target}


def main() -> None:
    target = TARGETS[sys.argv[1]]()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
