"""zxing-cpp: the default decoder (a self-contained wheel, several times faster than libzbar,
and it reads inverted codes such as a dark-mode phone shows).

A second look costs nothing on a frame with no code: it is taken only when zxing-cpp *found* a QR
code but could not read it (its ``return_errors`` answer). Then the frame is denoised (a 3x3 box
blur: a dim, noisy screen's modules drown in sensor noise, and zxing-cpp's binarizer treats a
low-range block as blank) and read again, and last the ``fallback`` decoder (libzbar, which reads
some blurred codes zxing-cpp loses) has a go.
"""

from __future__ import annotations

try:
    import zxingcpp
except ImportError as exc:  # open_decoder reports it, and "auto" moves on to the next decoder
    raise ImportError("zxing-cpp is not installed (pip install zxing-cpp)") from exc

import numpy as np
from PIL import Image, ImageFilter

from ..errors import DecoderError
from .base import Decoder, Gray, WithFallback


class ZxingDecoder(WithFallback):
    name = "zxing"

    def __init__(self, *, try_invert: bool = True, fallback: Decoder | None = None) -> None:
        self.try_invert = try_invert
        self.fallback = fallback
        """Read a frame in which zxing-cpp saw a code it could not decode, after the denoised look."""
        self._formats = zxingcpp.BarcodeFormat.QRCode

    def _read(self, frame: Gray) -> tuple[list[str], bool]:
        """The texts read, and whether a QR code was seen at all (read or not)."""
        try:
            found = zxingcpp.read_barcodes(
                frame, formats=self._formats, try_invert=self.try_invert, return_errors=True
            )
        except (ValueError, TypeError, RuntimeError) as exc:  # a frame zxing-cpp cannot take
            raise DecoderError(f"zxing-cpp: {exc}") from exc
        return [code.text for code in found if code.valid and code.text], bool(found)

    def decode(self, frame: Gray) -> list[str]:
        texts, seen = self._read(frame)
        if texts or not seen:
            return texts
        return self._second_look(frame)

    def _second_look(self, frame: Gray) -> list[str]:
        denoised = np.asarray(Image.fromarray(frame).filter(ImageFilter.BoxBlur(1)), dtype=np.uint8)
        texts, _ = self._read(denoised)
        if not texts and self.fallback is not None:
            texts = self.fallback.decode(frame)
        return texts
