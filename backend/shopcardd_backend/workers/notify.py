"""The notify worker: tells each customer, by email and SMS, which voucher they got.

For each ``claim.issued`` event, every configured channel (``channels/``) for which the claim
carries a contact gets one message. At most one per voucher and channel, however often the
event is delivered: the channel's notice is taken in the document store before sending
(``claim_notice``) and given back only when the send failed transiently, so a retry may send
it. A notice taken and never sent (the worker died mid-send) stays unsent: a customer is told
at most once, never twice. The notice keeps its deal, and is marked ``sent`` once the far end
took it or ``refused`` when it refused it for good: the deal's figures count both per channel.

A transient failure is tried again here a few times with a short backoff, then the event is
``retry``; a final one (a refused address or number) is ``park`` with the reason. A channel
that is down (``ChannelDown``) is not tried again for the rest of the batch: its events are
``retry`` at once, rather than each waiting out the same timeouts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ..events import CLAIM_ISSUED, ClaimIssued, Event
from ..settings import Settings, env_name
from ..stores.base import DocumentStore, NoticeOutcome
from .base import DONE, Result, Verdict
from .channels.base import Channel, ChannelDown, Message, SendDeferred, SendRefused

log = logging.getLogger("shopcardd_backend.workers.notify")
SMS_TITLE_CHARS = 40
"""A deal's title is cut to about this, at a word, in an SMS (paid per 160 characters)."""
TITLES_KEPT = 1000
"""Deal titles remembered by a worker (deals are few; a title never changes)."""


def valid_until(claim: ClaimIssued) -> str:
    """When the voucher expires, to the minute (rounded down: never later than it is)."""
    return datetime.fromtimestamp(claim.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def email_message(claim: ClaimIssued, title: str) -> Message:
    return Message(
        subject=f"Your voucher for {title}",
        text=(
            f"Hello,\n\nyou claimed a voucher for {title}.\n\n"
            f"Voucher: {claim.voucher_id}\n"
            f"Valid until: {valid_until(claim)}\n\n"
            "Show the voucher's QR code in the app at the counter before then.\n\n"
            "ShopCardd\n"
        ),
    )


def sms_message(claim: ClaimIssued, title: str) -> Message:
    short = title if len(title) <= SMS_TITLE_CHARS else title[: SMS_TITLE_CHARS - 2].rsplit(" ", 1)[0] + "..."
    return Message(
        subject="",
        text=(
            f"ShopCardd: your voucher {claim.voucher_id} for {short} is valid until "
            f"{valid_until(claim)}. Show its QR code in the app at the counter."
        ),
    )


MESSAGES: dict[str, Callable[[ClaimIssued, str], Message]] = {"email": email_message, "sms": sms_message}


class NotifyHandler:
    name = "notify"
    event_types = (CLAIM_ISSUED,)

    def __init__(
        self,
        store: DocumentStore,
        channels: Sequence[Channel],
        *,
        batch_size: int = 20,
        tries: int = 3,
        backoff: Callable[[int], float] = lambda attempt: 0.2 * 2**attempt,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.channels = list(channels)
        self.batch_size = batch_size
        self.tries = tries
        """Sends of one message in one delivery before the event is ``retry``."""
        self.backoff = backoff
        self.sleep = sleep
        self._titles: dict[str, str] = {}

    @classmethod
    def from_settings(cls, store: DocumentStore, settings: Settings) -> NotifyHandler:
        """The channels the settings configure; one that is not configured is said once, here."""
        channels: list[Channel] = []
        server = settings.smtp_server
        if server is not None and settings.mail_from is not None:
            from .channels.email import EmailChannel

            channels.append(EmailChannel(server, settings.mail_from))
        else:
            log.info(f"email notices are off: {env_name('smtp_url')} is not set")
        if settings.sms_url is not None and settings.sms_api_key is not None:
            from .channels.sms import SmsChannel

            channels.append(SmsChannel(settings.sms_url, settings.sms_api_key))
        else:
            log.info(f"SMS notices are off: {env_name('sms_url')} is not set")
        return cls(store, channels)

    def handle(self, events: Sequence[Event]) -> list[Result]:
        down: dict[str, Result] = {}
        try:
            return [self._notify(event, down) if isinstance(event, ClaimIssued) else DONE for event in events]
        finally:
            for channel in self.channels:
                channel.close()  # no idle connection held between batches

    def _notify(self, claim: ClaimIssued, down: dict[str, Result]) -> Result:
        """Every channel's message for one claim; ``retry`` if any may get through later."""
        results = []
        for channel in self.channels:
            to = channel.recipient(claim)
            if to is None:
                continue
            results.append(down.get(channel.name) or self._send_once(channel, claim, to, down))
        for verdict in (Verdict.RETRY, Verdict.PARK):
            if any(result.verdict is verdict for result in results):
                return Result(verdict, "; ".join(r.reason for r in results if r.verdict is not Verdict.DONE))
        return DONE

    def _send_once(self, channel: Channel, claim: ClaimIssued, to: str, down: dict[str, Result]) -> Result:
        """Send unless sent before: the notice is taken first, given back if the send may be
        retried. A channel found down goes into ``down``, with the result of its events."""
        message = MESSAGES[channel.name](claim, self._title(claim.deal_id))  # before taking the notice
        if not self.store.claim_notice(claim.voucher_id, channel.name, claim.deal_id):
            return DONE
        where = {"channel": channel.name, "voucher_id": claim.voucher_id, "deal_id": claim.deal_id}
        failure = SendDeferred("not tried")
        for attempt in range(self.tries):
            try:
                channel.send(to, message)
            except SendRefused as exc:
                self.store.record_notice(claim.voucher_id, channel.name, NoticeOutcome.REFUSED)
                log.warning("notice refused; parked", extra={**where, "reason": str(exc)})
                return Result(Verdict.PARK, f"{channel.name}: {exc}")
            except SendDeferred as exc:
                failure = exc
                if attempt + 1 < self.tries:
                    self.sleep(self.backoff(attempt))
            else:
                self.store.record_notice(claim.voucher_id, channel.name, NoticeOutcome.SENT)
                log.info("notice sent", extra=where)
                return DONE
        self.store.release_notice(claim.voucher_id, channel.name)
        log.warning("notice not sent; to be retried", extra={**where, "reason": str(failure)})
        result = Result(Verdict.RETRY, f"{channel.name}: {failure}")
        if isinstance(failure, ChannelDown):
            down[channel.name] = result
        return result

    def _title(self, deal_id: str) -> str:
        """The deal's title as the customer saw it (its id if the store has no such deal)."""
        if deal_id not in self._titles:
            if len(self._titles) >= TITLES_KEPT:
                self._titles.clear()
            deal = self.store.get_deal(deal_id)
            self._titles[deal_id] = deal.title if deal is not None else f"deal {deal_id}"
        return self._titles[deal_id]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
