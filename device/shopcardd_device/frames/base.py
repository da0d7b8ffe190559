"""The frame source port: one narrow method, ``read``, plus ``close``.

A camera gives images to decode; a USB barcode scanner gives the code's text directly, so a
frame carries one or the other. ``read`` returns None when a finite source (a list of image
files, a closed stdin) is exhausted, and raises ``FrameError`` for one bad frame: the scan
loop logs it and reads on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..decoders.base import Gray


@dataclass(frozen=True, slots=True)
class Frame:
    """One grayscale image to decode, or one code a scanner already decoded."""

    image: Gray | None = None
    text: str | None = None
    origin: str = ""
    """Where it came from (a file name, a device), for the log."""


class FrameSource(Protocol):
    name: str

    def read(self) -> Frame | None:
        """The next frame; None at the end of a finite source. May block for a camera."""
        ...

    def close(self) -> None: ...
