"""The decoder port: a grayscale frame in, the texts of the QR codes in it out."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..closing import Closing

Gray = npt.NDArray[np.uint8]
"""A grayscale frame: a 2-D uint8 array, height x width, C-contiguous."""


class Decoder(Protocol):
    """Finds QR codes only: other symbologies are never looked for (fewer false reads, faster)."""

    name: str

    def decode(self, frame: Gray) -> list[str]:
        """The text of every QR code found in ``frame``; an empty list when there is none."""
        ...

    def close(self) -> None: ...


class WithFallback(Closing):
    """An adapter that may hand a frame it could not read to another decoder, and owns it."""

    fallback: Decoder | None = None

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
