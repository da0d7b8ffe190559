"""The frame source port: one narrow method, ``read``, plus ``close`` and ``with``.

A camera gives images to decode; a USB barcode scanner gives the code's text directly, so a
frame carries one or the other. ``read`` returns None when a finite source (a list of image
files, a closed stdin) is exhausted, and raises ``FrameError`` for one bad frame: the scan
loop logs it and reads on.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from ..decoders.base import Gray


@dataclass(frozen=True, slots=True)
class Frame:
    """One grayscale image to decode, or one code a scanner already decoded."""

    image: Gray | None = None
    text: str | None = None
    origin: str = ""
    """Where it came from (a file name, a device), for the log."""


class FrameSource(Protocol):
    """A source of frames, used as a context manager (``with open_source(...) as source:``):
    every adapter inherits ``Closing``, whose ``__exit__`` calls ``close``."""

    name: str

    def read(self) -> Frame | None:
        """The next frame; None at the end of a finite source. May block for a camera."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None: ...
