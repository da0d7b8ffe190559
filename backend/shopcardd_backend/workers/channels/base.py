"""The channel port: how the notify worker reaches a customer (email, SMS).

A channel sends one message to one recipient and says how a failure should be treated, by
the error it raises: ``SendRefused`` is final (this recipient or message will never get
through: never retried), ``SendDeferred`` is transient for this message (try it later), and
``ChannelDown`` is transient for the channel itself (the server is down or overloaded: every
other message would fail alike, so the worker stops using it for the rest of the batch).
Adapters: ``email.py`` (smtplib), ``sms.py`` (requests); only they import their library.
Messages never carry the vendor's own error text beyond a short reply, nor any secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ...events import ClaimIssued


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    """The email's subject; SMS has none."""
    text: str


class SendFailed(Exception):
    """Root of the channels' errors; ``str(exc)`` says what happened, for logs and parked events."""


class SendRefused(SendFailed, ValueError):
    """Final: the recipient or the message is refused; sending it again would be refused again."""


class SendDeferred(SendFailed, ConnectionError):
    """Transient for this message (a mailbox that says "try later"); a later try may succeed."""


class ChannelDown(SendDeferred):
    """Transient for the whole channel: the server cannot be reached, or answers "later" to all."""


class Channel(Protocol):
    name: str
    """``email`` or ``sms``: the word in logs, parked reasons and the store's notice markers."""

    def recipient(self, claim: ClaimIssued) -> str | None:
        """The customer's contact on this channel, or None when the claim has none."""

    def send(self, to: str, message: Message) -> None:
        """Send, or raise ``SendRefused`` / ``SendDeferred`` / ``ChannelDown``."""

    def close(self) -> None:
        """Let go of any open connection; a later ``send`` opens a new one."""
