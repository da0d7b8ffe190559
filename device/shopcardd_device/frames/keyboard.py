"""USB barcode scanners in keyboard mode: they type the code and press Enter.

Reads lines from stdin (``path = "-"``, the default) or from a TTY or file named in
``[camera] path``; each non-empty line is one scanned code, no decoding needed.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..closing import Closing
from ..errors import ConfigError
from ..inputs import keep_undecodable
from .base import Frame


class KeyboardSource(Closing):
    name = "keyboard"

    def __init__(self, path: str = "-", stream: TextIO | None = None) -> None:
        self._owned = False
        if stream is not None:
            self._stream = stream
        elif path == "-":
            self._stream = keep_undecodable(sys.stdin)
        else:
            try:  # a garbled line is still a scan: its bytes are kept, judged bad_format and recorded
                self._stream = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 (closed in close)
            except OSError as exc:
                raise ConfigError(
                    f"[camera] path: cannot open {path} for a keyboard scanner: {exc.strerror}"
                ) from None
            self._owned = True
        self.origin = path

    def read(self) -> Frame | None:
        while True:
            line = self._stream.readline()
            if not line:
                return None
            code = line.strip()
            if code:
                return Frame(text=code, origin=self.origin)

    def close(self) -> None:
        if self._owned:
            self._stream.close()
