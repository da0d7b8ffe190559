"""Render a voucher as a QR code image (segno), at error correction M like the customer app.

segno is imported only when a code is made, so the command's help can list the formats anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import segno

ERROR_CORRECTION = "m"


FORMATS = ("png", "svg", "svgz", "pdf", "eps", "ppm", "pbm", "pam", "xbm", "xpm", "tex")
"""The image formats segno writes (by extension), so a wrong one is refused with this list, not
segno's own text; its text formats (.txt, .ans) take no --scale and are left out."""

MAX_SCALE = 64
"""Pixels per module; a version-13 code at 64 is already 4,500 pixels wide."""


def make_qr(token: str) -> segno.QRCode:
    """The code at level M: the app shows it so, and the counter's decoders and docs/performance.md's
    QR-version figures assume it. ``ValueError`` for nothing to encode or too much."""
    import segno

    if not token:
        raise ValueError("nothing to encode: the token is empty")
    try:
        # boost_error=False keeps level M even where the version would allow more.
        return segno.make_qr(token, error=ERROR_CORRECTION, boost_error=False)
    except segno.DataOverflowError:
        raise ValueError(f"a token of {len(token)} characters does not fit in a QR code at level M") from None


def format_list() -> str:
    """The formats as a reader meets them: ``.png, .svg, ...``."""
    return ", ".join(f".{name}" for name in FORMATS)


def qr_version(token: str) -> int:
    return int(make_qr(token).version)


def save_qr(token: str, out: Path, scale: int = 8, border: int = 4) -> int:
    """Write the code to ``out`` (PNG, SVG, ... by extension); return its QR version."""
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be from 1 to {MAX_SCALE} pixels per module")
    if out.suffix.lower().removeprefix(".") not in FORMATS:
        raise ValueError(
            f"{out}: the file extension names the image format, and {out.suffix or 'none'!r} is not one "
            f"it can write; use {format_list()}"
        )
    code = make_qr(token)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        code.save(str(out), scale=scale, border=border)
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from None
    return int(code.version)
