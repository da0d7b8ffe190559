"""A scripted frame source, and voucher QR codes rendered as a camera sees them.

Off the Pi there is no camera, so the tests, the benchmark and demos show the decoders
frames made here: a real voucher's QR code (segno, level M, as the customer app shows it)
on a phone-sized patch of a grayscale frame, with the faults of a real scan: blur, sensor
noise, tilt (perspective), low contrast, glare, and a dark-mode phone's inverted code.
It lives in the bench, not the counter: it draws the code with the provisioning QR maker
(segno), which a counter does not install. The tests import it from here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFilter

from shopcardd_device.closing import Closing
from shopcardd_device.decoders.base import Gray
from shopcardd_device.frames.base import Frame
from shopcardd_provision.qr import make_qr


@dataclass(frozen=True)
class Look:
    """How a code looks to the camera; the defaults are a clean, square-on code."""

    size: tuple[int, int] = (640, 480)
    """Frame width and height."""
    fill: float = 0.7
    """Share of the frame height the code (with its quiet zone) covers."""
    blur: float = 0.0
    """Gaussian blur radius in pixels (focus, motion)."""
    noise: float = 0.0
    """Standard deviation of sensor noise, in gray levels."""
    tilt: float = 0.0
    """Perspective: how much narrower the far edge is, as a share of the code's width (0-0.5)."""
    contrast: float = 1.0
    """1 for black on white; 0.2 is a dim screen behind a reflection."""
    glare: float = 0.0
    """Brightness (0-1) of a reflection blob over the code."""
    inverted: bool = False
    """A dark-mode phone: light modules on a dark screen."""
    background: int = 90
    seed: int = 0


DEGRADED_KINDS: Final = ("blur", "tilt", "low contrast", "glare", "dark mode")
"""The faults of the degraded set, one per frame in turn."""


def degraded_looks(count: int = 40, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Look]:
    """A camera at its worst, as ``shopcardd-bench device`` and the decoder tests show it: every
    frame a little blurred (0.6-1.4 px) and noisy (3-9 levels), and in turn one fault more: heavy
    blur (1.4-2 px, focus hunting), tilt (5-25 %), low contrast (0.08-0.3, a dim screen, with
    4-12 levels of noise), glare (0.4-0.9), or a dark-mode phone. Seeded: the same set every time."""
    rng = np.random.default_rng(seed)
    looks = []
    for index in range(count):
        kind = DEGRADED_KINDS[index % len(DEGRADED_KINDS)]
        blur, noise = float(rng.uniform(0.6, 1.4)), float(rng.uniform(3.0, 9.0))
        fault: dict[str, float | bool] = {}
        if kind == "blur":
            blur = float(rng.uniform(1.4, 2.0))
        elif kind == "tilt":
            fault["tilt"] = float(rng.uniform(0.05, 0.25))
        elif kind == "low contrast":
            fault["contrast"], noise = float(rng.uniform(0.08, 0.3)), float(rng.uniform(4.0, 12.0))
        elif kind == "glare":
            fault["glare"] = float(rng.uniform(0.4, 0.9))
        else:
            fault["inverted"] = True
        looks.append(Look(size=size, blur=blur, noise=noise, seed=seed * 1000 + index, **fault))  # type: ignore[arg-type]
    return looks


def qr_modules(token: str, border: int = 4) -> Gray:
    """The code's modules as a 0/1 array with its quiet zone (1 = dark), drawn as the customer app
    draws it (``shopcardd_provision.qr.make_qr``: error correction M)."""
    matrix = np.array(make_qr(token).matrix, dtype=np.uint8)
    return np.pad(matrix, border)


def _perspective_coefficients(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """Pillow's PERSPECTIVE coefficients mapping output points ``dst`` back to input points ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return list(np.linalg.solve(np.array(rows, dtype=float), src.reshape(8)))


def render(token: str, look: Look = Look()) -> Gray:
    """A grayscale frame of ``token``'s QR code, degraded as ``look`` says."""
    width, height = look.size
    rng = np.random.default_rng(look.seed)
    modules = qr_modules(token)
    side = int(height * look.fill)
    dark = modules.astype(bool) ^ look.inverted
    mid, swing = 128.0, 127.0 * look.contrast
    code = np.where(dark, mid - swing, mid + swing).astype(np.uint8)
    patch = Image.fromarray(code).resize((side, side), Image.Resampling.NEAREST)
    frame = Image.new("L", (width, height), look.background)
    left, top = (width - side) // 2, (height - side) // 2
    frame.paste(patch, (left, top))
    if look.tilt:
        inset = side * look.tilt / 2
        src = np.array(
            [[left, top], [left + side, top], [left + side, top + side], [left, top + side]], float
        )
        dst = src + np.array([[0, inset], [0, 0], [0, 0], [0, -inset]])  # left edge farther away
        frame = frame.transform(
            frame.size,
            Image.Transform.PERSPECTIVE,
            _perspective_coefficients(src, dst),
            Image.Resampling.BILINEAR,
            fillcolor=look.background,
        )
    if look.blur:
        frame = frame.filter(ImageFilter.GaussianBlur(look.blur))
    pixels = np.asarray(frame, dtype=np.float32)
    if look.glare:
        ys, xs = np.mgrid[0:height, 0:width]
        cx, cy, sigma = left + side * 0.65, top + side * 0.35, side * 0.18
        pixels = pixels + 255.0 * look.glare * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    if look.noise:
        pixels = pixels + rng.normal(0.0, look.noise, pixels.shape)
    return np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8))


class ScriptedSource(Closing):
    """Frames given in advance (images or already-decoded texts), then the end of the source."""

    name = "scripted"

    def __init__(self, frames: Iterable[Frame | Gray | str]) -> None:
        self._frames = iter(frames)

    def read(self) -> Frame | None:
        item = next(self._frames, None)
        if item is None or isinstance(item, Frame):
            return item
        if isinstance(item, str):
            return Frame(text=item, origin="scripted")
        return Frame(image=item, origin="scripted")
