"""QR decoders behind one port; ``open_decoder`` picks the configured or the fastest installed.

Each adapter imports its vendor library, so it is imported only when chosen. The chosen decoder
gets the other one, where installed, for a second look at a frame its first attempt could not
read (each adapter says when it asks): a camera's worst frames are read by one library or the
other, and the counter should read every frame either can.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

from ..errors import ConfigError
from .base import Decoder, Gray

if TYPE_CHECKING:
    from .zbar import ZbarDecoder
    from .zxing import ZxingDecoder

FASTEST_FIRST: Final = ("zxing", "zbar")
"""Measured by ``shopcardd-bench device``: zxing-cpp is about 5x faster than libzbar at 640x480."""


def open_decoder(name: str = "auto", *, try_invert: bool = True, second_look: bool = True) -> Decoder:
    """The decoder called ``name``, or with ``auto`` the fastest one installed; with
    ``second_look`` (the counter's way) the other decoder, where installed, as its fallback."""
    names = FASTEST_FIRST if name == "auto" else (name,)
    problems = []
    for candidate in names:
        try:
            decoder = _open(candidate, try_invert)
        except ImportError as exc:  # the wheel is missing, or libzbar0 for pyzbar
            problems.append(f"{candidate}: {exc}")
            continue
        if second_look:
            other = next(n for n in FASTEST_FIRST if n != candidate)
            with contextlib.suppress(ImportError):
                decoder.fallback = _open(other, try_invert)
        return decoder
    raise ConfigError(f"[decoder] name: no QR decoder can be loaded ({'; '.join(problems)})")


def _open(name: str, try_invert: bool) -> ZxingDecoder | ZbarDecoder:
    if name == "zxing":
        from .zxing import ZxingDecoder

        return ZxingDecoder(try_invert=try_invert)
    if name == "zbar":
        from .zbar import ZbarDecoder

        return ZbarDecoder(try_invert=try_invert)
    raise ConfigError(f'[decoder] name: unknown decoder {name!r}; choose "zxing" or "zbar"')


__all__ = ["FASTEST_FIRST", "Decoder", "Gray", "open_decoder"]
