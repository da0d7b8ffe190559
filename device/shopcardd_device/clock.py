"""Whether the system says its clock is synchronised: the one question the time floor asks the OS.

A Pi without a real-time clock boots with the time fake-hwclock or timesyncd saved at the last
shutdown, which looks believable but may be days behind; a clock set by hand may be far ahead.
Only a clock the system calls synchronised (NTP, or timesyncd having reached a server) counts as
evidence for the time floor (``policy``). The kernel keeps that state: ``adjtimex`` answers
``TIME_ERROR`` while the clock is unsynchronised (``STA_UNSYNC``), as ``timedatectl``'s "System
clock synchronized" reads it. Where adjtimex cannot be called (not Linux), systemd-timesyncd's
flag file is asked instead; when neither answers, the clock is taken as unsynchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Final

Synchronised = Callable[[], bool]
"""Asked before each scan and at start-up; tests pass their own answer."""

TIME_ERROR: Final = 5
"""adjtimex's answer while the kernel's clock is not synchronised (STA_UNSYNC or STA_CLOCKERR)."""
TIMESYNCD_FLAG: Final = Path("/run/systemd/timesync/synchronized")
"""Made by systemd-timesyncd once it has synchronised the clock (removed at boot)."""
_TIMEX_BYTES: Final = 512
"""Room for ``struct timex`` on any ABI (about 208 bytes on 64-bit Linux); zeroed, so
``modes`` (its first member) is 0: read only, change nothing."""


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    """libc's adjtimex, found once (``find_library`` may run ldconfig: not once per scan)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.adjtimex  # type: ignore[no-any-return]
    except (OSError, AttributeError, TypeError):
        return None


def system_clock_synchronised() -> bool:
    """Whether the kernel (else systemd-timesyncd) says the clock is synchronised."""
    adjtimex = _adjtimex()
    if adjtimex is not None:
        state = adjtimex(ctypes.create_string_buffer(_TIMEX_BYTES))
        if state >= 0:
            return state != TIME_ERROR
    return TIMESYNCD_FLAG.exists()
