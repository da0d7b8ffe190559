"""What every ``shopcardd-backend`` command shares: its two errors, its argument types, its settings."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings


class CommandError(Exception):
    """A command that cannot run as asked; the message says why (exit 1)."""


class UsageError(Exception):
    """An argument refused past argparse's own checks; the message says why (exit 2)."""


def user_id(text: str) -> str:
    """An argparse type: a user id the API accepts in a token (the API's own rule), in NFC."""
    from ..identity import USER_ID_RULE, normal_user_id

    normal = normal_user_id(text)
    if normal is None:
        raise argparse.ArgumentTypeError(f"user id {_shown(text)}: use {USER_ID_RULE}")
    return normal


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def merchant_id(text: str) -> str:
    """An argparse type: a merchant id a voucher can carry (``register_merchant``'s own rule)."""
    from ..identity import MERCHANT_ID, MERCHANT_ID_RULE

    if not MERCHANT_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"merchant id {_shown(text)}: use {MERCHANT_ID_RULE}")
    return text


DEAL_ID_RULE = "1 to 64 letters, digits, '_' or '-'"


def deal_id(text: str) -> str:
    """An argparse type: the form of the deal ids the API makes (no Redis hash-tag braces)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"deal id {_shown(text)}: use {DEAL_ID_RULE}")
    return text


def load_settings() -> Settings:
    """The ``SHOPCARDD_*`` environment, read when a command runs (never at import)."""
    from ..settings import Settings

    return Settings.from_env()
