"""One root exception for the counter device; subclasses also inherit the matching builtin."""

from __future__ import annotations


class DeviceError(Exception):
    """Anything the counter device refuses or cannot do; the message says what and why."""


class ConfigError(DeviceError, ValueError):
    """A missing or wrong setting: start-up stops with one line naming the setting."""


class LedgerError(DeviceError, RuntimeError):
    """The ledger cannot be opened, fails its integrity check, or a write failed."""


class LedgerDamaged(LedgerError):
    """The ledger file is corrupt or not a ledger: the counter must not run on it until an operator
    salvages what can be read (``shopcardd-device salvage``); restarting cannot fix it."""


class LedgerOfAnotherDevice(ConfigError):
    """The ledger records another device's id: two configurations point at one ``data_dir``, and
    sharing a ledger would answer one counter's scans with another's redemptions."""


class LedgerFull(LedgerError):
    """The disk holding the ledger is full: nothing can be recorded, so nothing is accepted, until
    space returns (a failure that passes by itself once the disk is cleared)."""


class FrameError(DeviceError, OSError):
    """One frame could not be read; the scan loop logs it and asks for the next."""


class DecoderError(DeviceError, RuntimeError):
    """A decoder is not installed or failed on a frame."""


class SignalError(DeviceError, RuntimeError):
    """The LEDs and buzzer cannot be driven (no GPIO, or no pin factory chosen)."""
