"""zxing-cpp: the default decoder (a self-contained wheel, several times faster than libzbar,
and it reads inverted codes such as a dark-mode phone shows)."""

from __future__ import annotations

try:
    import zxingcpp
except ImportError as exc:  # open_decoder reports it, and "auto" moves on to the next decoder
    raise ImportError("zxing-cpp is not installed (pip install zxing-cpp)") from exc

from ..closing import Closing
from ..errors import DecoderError
from .base import Gray


class ZxingDecoder(Closing):
    name = "zxing"

    def __init__(self, *, try_invert: bool = True) -> None:
        self.try_invert = try_invert
        self._formats = zxingcpp.BarcodeFormat.QRCode

    def decode(self, frame: Gray) -> list[str]:
        try:
            found = zxingcpp.read_barcodes(frame, formats=self._formats, try_invert=self.try_invert)
        except (ValueError, TypeError, RuntimeError) as exc:  # a frame zxing-cpp cannot take
            raise DecoderError(f"zxing-cpp: {exc}") from exc
        return [code.text for code in found if code.valid and code.text]
