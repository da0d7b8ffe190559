"""QR decoders behind one port; ``open_decoder`` picks the configured or the fastest installed.

Each adapter imports its vendor library, so it is imported only when chosen.
"""

from __future__ import annotations

from typing import Final

from ..errors import ConfigError
from .base import Decoder, Gray

FASTEST_FIRST: Final = ("zxing", "zbar")
"""Measured by ``shopcardd-bench device``: zxing-cpp is about 5x faster than libzbar at 640x480."""


def open_decoder(name: str = "auto", *, try_invert: bool = True) -> Decoder:
    """The decoder called ``name``, or with ``auto`` the fastest one installed."""
    names = FASTEST_FIRST if name == "auto" else (name,)
    problems = []
    for candidate in names:
        try:
            if candidate == "zxing":
                from .zxing import ZxingDecoder

                return ZxingDecoder(try_invert=try_invert)
            if candidate == "zbar":
                from .zbar import ZbarDecoder

                return ZbarDecoder(try_invert=try_invert)
        except ImportError as exc:  # the wheel is missing, or libzbar0 for pyzbar
            problems.append(f"{candidate}: {exc}")
            continue
        raise ConfigError(f'[decoder] name: unknown decoder {candidate!r}; choose "zxing" or "zbar"')
    raise ConfigError(f"[decoder] name: no QR decoder can be loaded ({'; '.join(problems)})")


__all__ = ["FASTEST_FIRST", "Decoder", "Gray", "open_decoder"]
