"""Frame sources behind one port; ``open_source`` builds the one ``[camera] source`` names."""

from __future__ import annotations

from ..config import CameraConfig
from .base import Frame, FrameSource


def open_source(config: CameraConfig) -> FrameSource:
    """Import and open only the chosen source, so a missing vendor library elsewhere never matters."""
    if config.source == "files":
        from .files import FileSource

        return FileSource(config.path)
    if config.source == "keyboard":
        from .keyboard import KeyboardSource

        return KeyboardSource(config.path[0] if config.path else "-")
    if config.source == "v4l2":
        from .v4l2 import V4l2Source

        return V4l2Source(config.path[0] if config.path else "/dev/video0", config.width, config.height)
    from .picamera import PiCameraSource

    return PiCameraSource(config)


__all__ = ["Frame", "FrameSource", "open_source"]
