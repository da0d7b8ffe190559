"""The Raspberry Pi camera through picamera2 (from apt: ``python3-picamera2``).

Scanning needs small grayscale frames: a video configuration with a ``lores`` stream in
YUV420, whose Y plane *is* the grayscale frame (no colour conversion, no full-size frames).
On Camera Module 3 autofocus runs continuously in the macro range, since a phone is held
10-25 cm from the lens. A phone screen is bright: exposure compensation (``exposure_value``)
darkens it by default; ``exposure_us`` and ``analogue_gain`` fix exposure outright.
picamera2 is imported only when this source is chosen, so the package works off the Pi.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..closing import Closing
from ..config import CameraConfig
from ..errors import ConfigError, FrameError
from .base import Frame


def camera_controls(config: CameraConfig, available: dict[str, Any], enums: Any) -> dict[str, Any]:
    """The libcamera controls for scanning, limited to those this camera has."""
    wanted: dict[str, Any] = {}
    if config.autofocus != "off" and "AfMode" in available:
        wanted["AfMode"] = enums.AfModeEnum.Continuous
        if "AfRange" in available:
            range_ = enums.AfRangeEnum.Macro if config.autofocus == "macro" else enums.AfRangeEnum.Normal
            wanted["AfRange"] = range_
    if config.exposure_us:
        wanted.update(AeEnable=False, ExposureTime=config.exposure_us)
    elif "ExposureValue" in available:
        wanted["ExposureValue"] = config.exposure_value
    if config.analogue_gain:
        wanted["AnalogueGain"] = config.analogue_gain
    return {name: value for name, value in wanted.items() if name in available}


class PiCameraSource(Closing):
    name = "picamera"

    def __init__(self, config: CameraConfig) -> None:
        try:
            from libcamera import controls
            from picamera2 import Picamera2
        except ImportError:
            raise ConfigError(
                '[camera] source: "picamera" needs picamera2 (apt install python3-picamera2, and a venv made'
                " with --system-site-packages); off the Pi use v4l2, files or keyboard"
            ) from None
        self._size = (config.width, config.height)
        try:
            self._camera = Picamera2()
        except (RuntimeError, IndexError) as exc:
            raise ConfigError(f"[camera] source: no Pi camera found: {exc}") from None
        try:
            video = self._camera.create_video_configuration(
                main={"size": self._size, "format": "YUV420"},
                lores={"size": self._size, "format": "YUV420"},
                buffer_count=4,
            )
            self._camera.configure(video)
            self._camera.set_controls(camera_controls(config, self._camera.camera_controls, controls))
            self._camera.start()
        except Exception:
            self._camera.close()
            raise

    def read(self) -> Frame | None:
        try:
            yuv = self._camera.capture_array("lores")
        except RuntimeError as exc:
            raise FrameError(f"Pi camera: {exc}") from exc
        width, height = self._size
        # The Y plane only; rows may be padded to the stride, and decoders want contiguous pixels.
        return Frame(image=np.ascontiguousarray(yuv[:height, :width]), origin="picamera")

    def close(self) -> None:
        self._camera.stop()
        self._camera.close()
