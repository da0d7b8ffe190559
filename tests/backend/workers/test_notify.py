"""The notify worker, as the customer sees it: one email and one SMS per voucher, saying what
they got; never two, however often the event comes back; refusals parked, outages retried.
Against a real SMTP server (aiosmtpd) and a real HTTP SMS API on loopback."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shopcardd_backend.events import ClaimIssued
from shopcardd_backend.settings import Settings
from shopcardd_backend.stores.base import DealRecord, DealStatus, DocumentStore, NoticeCounts
from shopcardd_backend.workers.base import DONE, Verdict
from shopcardd_backend.workers.notify import NotifyHandler

from .conftest import MailServer, SmsProvider

ISSUED = int(datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC).timestamp())
API_KEY = "sms-key-0123456789"


def claim(voucher_id: str = "vA1", **contacts: Any) -> ClaimIssued:
    contacts = {"email": f"{voucher_id.lower()}@example.com", "phone": "+4915100000001", **contacts}
    return ClaimIssued(voucher_id, "d1", "m1", "u1", f"key-{voucher_id}", ISSUED, ISSUED + 5400, **contacts)


def settings(tmp_path: Path, mail: MailServer | None = None, sms: SmsProvider | None = None) -> Settings:
    channels: dict[str, Any] = {"smtp_url": None, "mail_from": None, "sms_url": None, "sms_api_key": None}
    if mail is not None:
        channels.update(smtp_url=mail.url, mail_from="ShopCardd <vouchers@shopcardd.example>")
    if sms is not None:
        channels.update(sms_url=sms.url, sms_api_key=API_KEY)
    return Settings(_env_file=None, data_dir=tmp_path, **channels)  # type: ignore[call-arg]


def notify(
    store: DocumentStore, tmp_path: Path, mail: MailServer | None, sms: SmsProvider | None
) -> NotifyHandler:
    """The handler as ``worker notify`` builds it, without waiting between tries."""
    handler = NotifyHandler.from_settings(store, settings(tmp_path, mail, sms))
    handler.sleep = lambda seconds: None
    return handler


@pytest.fixture
def sqlite_store(make_store: Any) -> DocumentStore:
    return make_store("sqlite")


def with_deal(store: DocumentStore, title: str = "Half-price flat white") -> DocumentStore:
    now = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    store.add_deal(DealRecord("d1", "m1", title, 10, 1, 5400, None, None, DealStatus.ACTIVE, now))
    return store


def test_a_customer_is_told_by_email_and_sms_which_voucher_they_got(
    store: DocumentStore, tmp_path: Path, mail_server: MailServer, sms_provider: SmsProvider
) -> None:
    handler = notify(with_deal(store), tmp_path, mail_server, sms_provider)
    assert handler.handle([claim("vA1")]) == [DONE]

    [email] = mail_server.to("va1@example.com")
    assert email["From"] == "ShopCardd <vouchers@shopcardd.example>"
    assert "Half-price flat white" in email["Subject"]
    body = email.get_content()
    for said in ("Half-price flat white", "vA1", "2026-11-25 13:30 UTC"):
        assert said in body
    [sms] = sms_provider.sent
    assert sms["auth"] == f"Bearer {API_KEY}"
    assert sms["json"]["to"] == "+4915100000001"
    for said in ("Half-price flat white", "vA1", "2026-11-25 13:30 UTC"):
        assert said in sms["json"]["text"]
    assert len(sms["json"]["text"]) <= 160, "one SMS, not several"
    assert API_KEY not in body and "key-vA1" not in body + sms["json"]["text"]
    assert store.notices_of("d1") == {"email": NoticeCounts(sent=1), "sms": NoticeCounts(sent=1)}


def test_a_redelivered_batch_tells_nobody_twice(
    store: DocumentStore, tmp_path: Path, mail_server: MailServer, sms_provider: SmsProvider
) -> None:
    batch = [claim("vA1"), claim("vB2", phone="+4915100000002")]
    assert notify(store, tmp_path, mail_server, sms_provider).handle(batch) == [DONE, DONE]
    assert notify(store, tmp_path, mail_server, sms_provider).handle(batch) == [DONE, DONE]
    assert notify(store, tmp_path, mail_server, sms_provider).handle(batch[::-1]) == [DONE, DONE]
    assert len(mail_server.to("va1@example.com")) == len(mail_server.to("vb2@example.com")) == 1
    assert len(sms_provider.texts_to("+4915100000001")) == len(sms_provider.texts_to("+4915100000002")) == 1
    assert store.notices_of("d1") == {"email": NoticeCounts(sent=2), "sms": NoticeCounts(sent=2)}


def test_only_the_contacts_a_claim_has_are_used(
    sqlite_store: DocumentStore, tmp_path: Path, mail_server: MailServer, sms_provider: SmsProvider
) -> None:
    handler = notify(sqlite_store, tmp_path, mail_server, sms_provider)
    batch = [claim("vA1", phone=None), claim("vB2", email=None), claim("vC3", email=None, phone=None)]
    assert handler.handle(batch) == [DONE, DONE, DONE]
    assert [message["To"] for message in mail_server.inbox] == ["va1@example.com"]
    assert [request["json"]["to"] for request in sms_provider.sent] == ["+4915100000001"]


def test_without_a_deal_record_the_message_names_the_deal_by_its_id(
    sqlite_store: DocumentStore, tmp_path: Path, mail_server: MailServer
) -> None:
    assert notify(sqlite_store, tmp_path, mail_server, None).handle([claim("vA1", phone=None)]) == [DONE]
    assert "deal d1" in mail_server.inbox[0]["Subject"]


def test_an_address_the_mail_server_refuses_is_parked_and_never_tried_again(
    sqlite_store: DocumentStore, tmp_path: Path, mail_server: MailServer
) -> None:
    mail_server.replies["va1@example.com"] = "550 5.1.1 No such mailbox"
    handler = notify(sqlite_store, tmp_path, mail_server, None)
    [parked, sent] = handler.handle([claim("vA1", phone=None), claim("vB2", phone=None)])
    assert parked.verdict is Verdict.PARK and "550" in parked.reason and "email" in parked.reason
    assert sent == DONE, "one refused address does not hold up the others"
    assert handler.handle([claim("vA1", phone=None)]) == [DONE]
    assert mail_server.tried.count("va1@example.com") == 1
    assert mail_server.to("va1@example.com") == []
    assert sqlite_store.notices_of("d1") == {"email": NoticeCounts(sent=1, refused=1)}


def test_a_mailbox_that_says_try_later_gets_its_email_on_a_later_delivery(
    sqlite_store: DocumentStore, tmp_path: Path, mail_server: MailServer
) -> None:
    mail_server.replies["va1@example.com"] = "451 4.2.0 Mailbox busy, try later"
    handler = notify(sqlite_store, tmp_path, mail_server, None)
    [result] = handler.handle([claim("vA1", phone=None)])
    assert result.verdict is Verdict.RETRY and "451" in result.reason
    assert mail_server.tried.count("va1@example.com") == handler.tries, "tried again before giving up"
    del mail_server.replies["va1@example.com"]
    assert handler.handle([claim("vA1", phone=None)]) == [DONE]
    assert handler.handle([claim("vA1", phone=None)]) == [DONE]
    assert len(mail_server.to("va1@example.com")) == 1
    assert sqlite_store.notices_of("d1") == {"email": NoticeCounts(sent=1)}, "the failed tries count nowhere"


def test_while_the_mail_server_is_down_emails_wait_and_sms_go_out(
    store: DocumentStore, tmp_path: Path, mail_server: MailServer, sms_provider: SmsProvider
) -> None:
    mail_server.stop()
    handler = notify(store, tmp_path, mail_server, sms_provider)
    batch = [claim("vA1"), claim("vB2", phone="+4915100000002")]
    results = handler.handle(batch)
    assert [result.verdict for result in results] == [Verdict.RETRY, Verdict.RETRY]
    assert all("mail server" in result.reason for result in results)
    assert len(sms_provider.sent) == 2, "the SMS channel is not held up by the mail server"
    mail_server.start()
    assert handler.handle(batch) == [DONE, DONE]
    assert len(mail_server.to("va1@example.com")) == len(mail_server.to("vb2@example.com")) == 1
    assert len(sms_provider.sent) == 2, "SMS already sent are not sent again"


def test_a_number_the_sms_provider_refuses_is_parked_and_never_tried_again(
    sqlite_store: DocumentStore, tmp_path: Path, sms_provider: SmsProvider
) -> None:
    sms_provider.statuses["+4915100000001"] = 400
    handler = notify(sqlite_store, tmp_path, None, sms_provider)
    [result] = handler.handle([claim("vA1")])
    assert result.verdict is Verdict.PARK and "400" in result.reason and "sms" in result.reason
    assert handler.handle([claim("vA1")]) == [DONE]
    assert len(sms_provider.sent) == 1
    assert sqlite_store.notices_of("d1") == {"sms": NoticeCounts(refused=1)}


@pytest.mark.parametrize("status", [503, 429, 408])
def test_an_sms_provider_that_says_later_gets_the_message_once_it_takes_it(
    sqlite_store: DocumentStore, tmp_path: Path, sms_provider: SmsProvider, status: int
) -> None:
    sms_provider.statuses["+4915100000001"] = status
    handler = notify(sqlite_store, tmp_path, None, sms_provider)
    [result] = handler.handle([claim("vA1")])
    assert result.verdict is Verdict.RETRY and str(status) in result.reason
    assert len(sms_provider.sent) == handler.tries
    del sms_provider.statuses["+4915100000001"]
    assert handler.handle([claim("vA1")]) == [DONE]
    assert handler.handle([claim("vA1")]) == [DONE]
    assert len(sms_provider.texts_to("+4915100000001")) == 1


def test_an_unreachable_sms_provider_is_retried_and_not_asked_again_in_the_batch(
    sqlite_store: DocumentStore, tmp_path: Path, sms_provider: SmsProvider
) -> None:
    sms_provider.stop()
    handler = notify(sqlite_store, tmp_path, None, sms_provider)
    attempts: list[float] = []
    handler.sleep = attempts.append
    results = handler.handle([claim("vA1"), claim("vB2"), claim("vC3")])
    assert [result.verdict for result in results] == [Verdict.RETRY] * 3
    assert len(attempts) == handler.tries - 1, "backed off between tries of the first, then gave the batch up"
    sms_provider.start()
    assert handler.handle([claim("vA1"), claim("vB2"), claim("vC3")]) == [DONE] * 3
    assert len(sms_provider.sent) == 3


def test_unconfigured_channels_are_skipped_and_said_once(
    sqlite_store: DocumentStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="shopcardd_backend.workers.notify"):
        handler = notify(sqlite_store, tmp_path, None, None)
        assert handler.handle([claim("vA1"), claim("vB2")]) == [DONE, DONE]
        assert handler.handle([claim("vC3")]) == [DONE]
    said = [record.getMessage() for record in caplog.records]
    assert said == [
        "email notices are off: SHOPCARDD_SMTP_URL is not set",
        "SMS notices are off: SHOPCARDD_SMS_URL is not set",
    ]


def test_a_long_deal_title_is_cut_in_an_sms(
    sqlite_store: DocumentStore, tmp_path: Path, sms_provider: SmsProvider
) -> None:
    title = "Two large pizzas with any toppings and a bottle of house wine, Friday nights only"
    handler = notify(with_deal(sqlite_store, title), tmp_path, None, sms_provider)
    assert handler.handle([replace(claim("vA1"), email=None)]) == [DONE]
    text = sms_provider.sent[0]["json"]["text"]
    assert "Two large pizzas with any toppings..." in text and len(text) <= 160
