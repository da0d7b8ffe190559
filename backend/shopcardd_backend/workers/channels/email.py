"""The email channel: customer notices through an SMTP server (smtplib), one connection per batch.

The server's reply decides: a recipient or message refused with 5xx is final; 4xx is "try
later" for that message; a server that cannot be reached, closes the connection, says 421, or
refuses the connection set-up (STARTTLS, login, our sender) fails the same way for every
message, so it is ``ChannelDown``.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import parseaddr

from ...events import ClaimIssued
from ...settings import SmtpServer
from .base import ChannelDown, Message, SendDeferred, SendFailed, SendRefused

MAILBOX = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
SERVICE_CLOSING = 421


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())[:120]}"


def _by_reply(what: str, code: int, reply: bytes | str) -> SendFailed:
    """The error for an SMTP reply: 5xx final, 421 the server closing, other 4xx try later."""
    said = f"{what} ({_reply(code, reply)})"
    if code == SERVICE_CLOSING:
        return ChannelDown(said)
    if 500 <= code < 600:
        return SendRefused(said)
    return SendDeferred(said)


class EmailChannel:
    name = "email"

    def __init__(self, server: SmtpServer, sender: str, timeout: float = 10.0) -> None:
        self.server = server
        self.sender = sender
        """The ``From`` header (``Name <address>`` or a bare address)."""
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None

    def recipient(self, claim: ClaimIssued) -> str | None:
        return claim.email

    def send(self, to: str, message: Message) -> None:
        if not MAILBOX.fullmatch(to):
            raise SendRefused("the customer's email is not an address a mail server takes")
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = to
        email["Subject"] = message.subject
        email.set_content(message.text)
        smtp = self._connection()
        try:
            smtp.send_message(email, parseaddr(self.sender)[1], [to])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _by_reply("the mail server refused the recipient", code, reply) from None
        except smtplib.SMTPSenderRefused as exc:
            self.close()
            raise ChannelDown(
                f"the mail server refused our sender ({_reply(exc.smtp_code, exc.smtp_error)})"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise SendRefused("the mail server cannot deliver to this address (no SMTPUTF8)") from None
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise _by_reply("the mail server refused the message", exc.smtp_code, exc.smtp_error) from None
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise ChannelDown(f"the mail server dropped the connection ({type(exc).__name__})") from None

    def _connection(self) -> smtplib.SMTP:
        """The open connection, or a new one (STARTTLS and login done); ``ChannelDown`` if none."""
        if self._smtp is not None:
            return self._smtp
        server = self.server
        try:
            smtp = smtplib.SMTP(server.host, server.port, timeout=self.timeout)
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelDown(
                f"the mail server at {server.host}:{server.port} cannot be reached ({type(exc).__name__})"
            ) from None
        try:
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if server.username is not None and server.password is not None:
                smtp.login(server.username, server.password.get_secret_value())
        except smtplib.SMTPResponseException as exc:
            _quit(smtp)
            raise ChannelDown(
                f"the mail server refused the session ({_reply(exc.smtp_code, exc.smtp_error)})"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            _quit(smtp)
            raise ChannelDown(f"the mail server's session failed ({type(exc).__name__})") from None
        self._smtp = smtp
        return smtp

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            _quit(smtp)


def _quit(smtp: smtplib.SMTP) -> None:
    """End a session that may already be broken; nothing to report either way."""
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()
