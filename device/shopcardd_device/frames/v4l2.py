"""Any V4L2/USB camera, read through OpenCV's V4L2 backend.

OpenCV is not in the ``device`` extra (it is large and the Pi camera does not need it):
install ``opencv-python-headless`` to use this source. It is imported only here, only
when ``[camera] source = "v4l2"``. ``path`` is the device node (default ``/dev/video0``).
"""

from __future__ import annotations

from typing import Any

from ..closing import Closing
from ..errors import ConfigError, FrameError
from .base import Frame


class V4l2Source(Closing):
    name = "v4l2"

    def __init__(self, device: str = "/dev/video0", width: int = 640, height: int = 480) -> None:
        try:
            import cv2
        except ImportError:
            raise ConfigError(
                '[camera] source: "v4l2" needs OpenCV; pip install opencv-python-headless'
            ) from None
        self._cv2: Any = cv2
        # OpenCV's own warnings go straight to stderr: a camera that cannot be opened must stay
        # one line naming the setting, and a camera that drops frames is already logged as JSON.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        target: int | str = int(device) if device.isdigit() else device
        self._capture = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not self._capture.isOpened():
            self._capture.release()
            raise ConfigError(f"[camera] path: cannot open V4L2 camera {device}")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        self.origin = device

    def read(self) -> Frame | None:
        ok, image = self._capture.read()
        if not ok or image is None:
            raise FrameError(f"no frame from {self.origin}")
        if image.ndim == 3:
            image = self._cv2.cvtColor(image, self._cv2.COLOR_BGR2GRAY)
        return Frame(image=image, origin=self.origin)

    def close(self) -> None:
        self._capture.release()
