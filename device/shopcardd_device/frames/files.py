"""Image files as frames: a folder (its images in name order) or a list of files.

The simulated counter of the demo and the tests, and a way to replay frames a camera saved.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..closing import Closing
from ..decoders.base import Gray
from ..errors import ConfigError, FrameError
from ..inputs import IMAGE_SUFFIXES
from .base import Frame


def load_gray(path: Path) -> Gray:
    """Read an image file as a grayscale frame.

    An image of more pixels than Pillow's decompression-bomb limit is refused, not decoded: no
    camera frame comes near it, and decoding one would take the counter's memory and seconds.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return np.asarray(image.convert("L"), dtype=np.uint8)
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise FrameError(f"cannot read image {path}: {exc}") from exc


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Folders become their image files in name order; files stay in the order given."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.exists():
            found.append(item)
        else:
            raise ConfigError(f"[camera] path: {item} does not exist")
    return found


class FileSource(Closing):
    name = "files"

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self._pending = expand(paths)
        self._pending.reverse()

    def read(self) -> Frame | None:
        if not self._pending:
            return None
        path = self._pending.pop()  # advance first: a bad file must not be read again
        return Frame(image=load_gray(path), origin=str(path))
