"""Text that arrives from outside: scanned codes, stdin lines, ``verify``'s INPUTs.

A scanned code can be anything: bytes that are not UTF-8 (Python keeps them as lone
surrogates, which SQLite, strict JSON parsers and a UTF-8 terminal all refuse), control
characters that would move a terminal's cursor, or megabytes on one line. ``safe_code`` is
the one place that turns it into text every consumer takes: ``verify``'s echo and the JSON log
use it. The ledger keeps only ``fingerprint``: short, fixed in size, and no use to a thief.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Final, TextIO

from shopcardd_voucher import MAX_TOKEN_LENGTH

IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"})
CUT_MARKER: Final = "...[cut: {} characters]"
"""Ends a code longer than any voucher (``MAX_TOKEN_LENGTH``); says how long it was."""
FINGERPRINT_HEX_DIGITS: Final = 16


def fingerprint(raw: str) -> str:
    """``sha256:`` and the first 16 hex digits of the SHA-256 of the code's bytes (as scanned: bytes
    that were not UTF-8 count as themselves), so an operator holding a code can find its rows with
    ``printf %s CODE | sha256sum | cut -c1-16``, while the ledger holds nothing that could be
    scanned again, and every row is the same small size whatever was shown to the camera."""
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from an undecodable byte
        data = raw.encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(data).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def safe_code(raw: str) -> str:
    """``raw`` as printable text that encodes to UTF-8: undecodable bytes as ``\\xff``, other
    unprintable characters backslash-escaped, and cut after ``MAX_TOKEN_LENGTH`` characters."""
    head = raw[: MAX_TOKEN_LENGTH + 1]  # escaping only lengthens: never walk megabytes
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else _escape(ch) for ch in head)
    if len(head) > MAX_TOKEN_LENGTH:
        return head[:MAX_TOKEN_LENGTH] + CUT_MARKER.format(len(raw))
    return head


def _escape(ch: str) -> str:
    point = ord(ch)
    if 0xDC80 <= point <= 0xDCFF:  # a byte that was not UTF-8, as surrogateescape keeps it
        return f"\\x{point - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")  # \t, \x1b, \u200b, \ud800


def keep_undecodable(stream: TextIO) -> TextIO:
    """``stream`` set to keep bytes that are not UTF-8 instead of raising: under a UTF-8 locale
    stdin is strict, and one garbled line from a scanner would end the whole stream."""
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="surrogateescape")
    return stream


def names_a_file(item: str) -> bool:
    """Whether an INPUT was meant as a file: a path separator or an image suffix, which a voucher
    (base64url and dots) never has. A URL is a code, not a path."""
    if "://" in item:
        return False
    if os.sep in item or (os.altsep is not None and os.altsep in item):
        return True
    return os.path.splitext(item[-16:])[1].lower() in IMAGE_SUFFIXES
