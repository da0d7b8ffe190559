"""Waiting in tests for something that happens on another thread or process."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def until(condition: Callable[[], bool], what: str, seconds: float = 120) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds`` (a hang guard,
    not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.05)
