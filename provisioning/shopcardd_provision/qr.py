"""Render a voucher as a QR code image (segno), at error correction M like the customer app."""

from __future__ import annotations

from pathlib import Path

import segno

ERROR_CORRECTION = "m"


def make_qr(token: str) -> segno.QRCode:
    # boost_error=False keeps level M: the app shows the code at level M and the counter's
    # decoders and the QR-version figures in the README assume it.
    return segno.make_qr(token, error=ERROR_CORRECTION, boost_error=False)


def qr_version(token: str) -> int:
    return int(make_qr(token).version)


def save_qr(token: str, out: Path, scale: int = 8, border: int = 4) -> int:
    """Write the code to ``out`` (PNG, SVG, ... by extension); return its QR version."""
    code = make_qr(token)
    out.parent.mkdir(parents=True, exist_ok=True)
    code.save(str(out), scale=scale, border=border)
    return int(code.version)
