"""``shopcardd-device verify``'s inputs: tokens, image files and stdin lines, judged one at a time
as the counter would, with Ctrl-C taking effect between them.

Each verdict is yielded after its ledger commit, so the caller can answer it at once; an input
that gives no code (a missing file, an image without a QR code) is answered ``bad_format`` and
not recorded, since nothing was scanned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from shopcardd_voucher import Reason, Verdict

from .errors import DecoderError, FrameError, LedgerError
from .inputs import keep_undecodable, names_a_file

if TYPE_CHECKING:
    from .counter import Counter
    from .decoders.base import Decoder


class NotRecorded(LedgerError):
    """An input was judged but could not be recorded (a full disk, a locked ledger): not accepted."""

    def __init__(self, item: str, error: LedgerError) -> None:
        super().__init__(str(error))
        self.item = item


class StopAfterCurrent:
    """Ctrl-C (SIGINT) for ``verify``: while an input is judged, recorded and answered, it only asks
    to stop after that input; while waiting for the next input (a blocked stdin read) it stops at
    once. What was answered was committed first, so nothing is cut in half and nothing is noisy."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._waiting:
            raise KeyboardInterrupt

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Waiting for the next input: an interrupt ends the wait (KeyboardInterrupt)."""
        self._waiting = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self._waiting = False


def judge_inputs(
    counter: Counter,
    items: list[str],
    *,
    stdin: TextIO,
    decoder: Callable[[], Decoder],
    stop: StopAfterCurrent,
    record: bool = True,
) -> Iterator[tuple[str, Verdict]]:
    """Each input with its verdict, in order, until the inputs end or ``stop`` is asked;
    ``NotRecorded`` ends it at the first input that could not be recorded."""
    inputs = read_inputs(items, stdin)
    while not stop.requested:
        try:
            with stop.waiting():
                item, from_stdin = next(inputs)
        except (StopIteration, KeyboardInterrupt):
            return
        code, problem = code_in(item, from_stdin, decoder)
        if code is None:
            yield item, Verdict(Reason.BAD_FORMAT, None, problem)
            continue
        try:
            verdict = counter.scan(code, record=record)
        except LedgerError as exc:
            raise NotRecorded(item, exc) from exc
        yield item, verdict


def read_inputs(items: list[str], stdin: TextIO) -> Iterator[tuple[str, bool]]:
    """The inputs in order, each with whether it came from stdin; ``-`` expands to stdin's lines,
    read one at a time as they arrive."""
    for item in items:
        if item != "-":
            yield item, False
            continue
        for line in keep_undecodable(stdin):  # a garbled line is judged, not fatal
            if line.strip():
                yield line.strip(), True


def _is_file(path: Path) -> bool:
    """Whether an input names an image file (a token is never a file, and may be too long for one)."""
    try:
        return path.is_file()
    except OSError:
        return False


def code_in(item: str, from_stdin: bool, decoder: Callable[[], Decoder]) -> tuple[str | None, str]:
    """The code an input gives (the first QR code of an image file, else the input itself), or
    ``None`` and why there is none. A command-line input that names a file but is none gives
    none; a stdin line is always a code, since a scanner's junk must be judged."""
    path = Path(item)
    if _is_file(path):
        from .frames.files import load_gray

        try:
            codes = decoder().decode(load_gray(path))
        except (FrameError, DecoderError) as exc:
            return None, str(exc)
        return (codes[0], "") if codes else (None, f"no QR code found in {item}")
    if not from_stdin and names_a_file(item):
        return None, f"{'not a file' if os.path.exists(item) else 'no such file'}: {item}"
    return item, ""
