"""pyzbar over libzbar: the fallback decoder where the zxing-cpp wheel is not installed.

libzbar finds dark-on-light codes only; a dark-mode phone's inverted code is read only
with ``try_invert`` (a second pass on the inverted frame when the first finds nothing,
which doubles the cost of every empty frame). When both find nothing, the ``fallback``
decoder (zxing-cpp, where installed: a fraction of a millisecond on a frame with no code)
has a look: it reads strong tilt and very low contrast, which libzbar loses.
"""

from __future__ import annotations

import numpy as np

try:
    from pyzbar import pyzbar
except ImportError as exc:  # open_decoder reports it, and "auto" moves on to the next decoder
    if getattr(exc, "name", None) == "pyzbar":
        raise ImportError("pyzbar is not installed (pip install pyzbar)") from exc
    raise ImportError(
        f"pyzbar cannot load libzbar ({exc}): install it with apt install libzbar0, or use zxing"
    ) from exc

from ..errors import DecoderError
from .base import Decoder, Gray, WithFallback


class ZbarDecoder(WithFallback):
    name = "zbar"

    def __init__(self, *, try_invert: bool = True, fallback: Decoder | None = None) -> None:
        self.try_invert = try_invert
        self.fallback = fallback
        """Read a frame in which libzbar found nothing."""
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]

    def _read(self, frame: Gray) -> list[str]:
        try:
            found = pyzbar.decode(frame, symbols=self._symbols)
        except (
            ValueError,
            TypeError,
            ArithmeticError,
            pyzbar.PyZbarError,
        ) as exc:  # a frame libzbar cannot take
            raise DecoderError(f"libzbar: {exc}") from exc
        return [code.data.decode("utf-8", "replace") for code in found if code.data]

    def decode(self, frame: Gray) -> list[str]:
        texts = self._read(frame)
        if not texts and self.try_invert:
            texts = self._read(np.bitwise_not(frame))
        if not texts and self.fallback is not None:
            texts = self.fallback.decode(frame)
        return texts
