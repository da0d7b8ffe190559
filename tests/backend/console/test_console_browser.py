"""The merchant's console as a merchant uses it, in headless Chromium (see conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from workers.conftest import MailServer

from shopcardd_backend.identity import dev_identity_key, mint_user_token
from shopcardd_backend.settings import Settings
from shopcardd_voucher import SigningKey
from shopcardd_voucher.device_auth import make_device_token, public_jwk
from waiting import until

from .conftest import Served, check_page, serve

LIVE_SECONDS = 5
"""Claims made by a script show on the live page within this long."""


def sign_in(driver: Any, served: Served, key: str | None = None) -> None:
    driver.get(f"{served.url}/console/sign-in")
    field = driver.find_element(By.ID, "api_key")
    field.clear()
    field.send_keys(key if key is not None else served.api_key)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def follow(driver: Any, element: Any) -> None:
    """Click a link or a form's button and wait for the next page (never read the old one)."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    # While the old page goes, chromedriver may answer "node does not belong to the document"
    # instead of "stale": ask again until it says stale.
    WebDriverWait(driver, 10, ignored_exceptions=[WebDriverException]).until(ec.staleness_of(old))


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def wait_for_text(driver: Any, element_id: str, text: str, seconds: float = 10) -> None:
    WebDriverWait(driver, seconds).until(ec.text_to_be_present_in_element((By.ID, element_id), text))


def test_a_wrong_key_gets_its_message_and_the_right_one_signs_in(browser: Any, served: Served) -> None:
    browser.get(f"{served.url}/console/deals")
    assert "/console/sign-in" in browser.current_url  # no session: sent to sign in
    check_page(browser, "sign-in")
    sign_in(browser, served, "sck_not-a-key")
    assert "That API key is not a merchant's key" in text_of(browser, "sign-in-error")
    assert browser.get_cookie("shopcardd_console") is None
    sign_in(browser, served)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Deals"
    cookie = browser.get_cookie("shopcardd_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # no script can read the session


def test_a_new_deal_shows_claims_made_by_a_script_live(browser: Any, served: Served) -> None:
    sign_in(browser, served)
    form = {"f-title": "Live cake", "f-stock": "x", "f-per_user_limit": "1", "f-voucher_ttl_seconds": "600"}
    for field, value in form.items():
        browser.find_element(By.ID, field).send_keys(value)
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/console/deals'] button"))
    assert "Vouchers to sell: must be a whole number" in text_of(browser, "e-stock")  # beside its field
    check_page(browser, "deals-create-errors")
    stock = browser.find_element(By.ID, "f-stock")
    stock.clear()
    stock.send_keys("5")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/console/deals'] button"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Live cake")
    deal_id = browser.current_url.rsplit("/", 1)[1]
    assert text_of(browser, "stock-left") == "5 of 5"
    check_page(browser, "deal-live-new")

    for user in ("ann", "bob", "cid"):  # the script: three customers claim
        token = served.user_token(user)
        claimed = served.api(
            "POST",
            f"/v1/deals/{deal_id}/claims",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k1", "X-API-Key": ""},
        )
        assert claimed.status_code == 201, claimed.text
    refused = served.api(
        "POST",
        f"/v1/deals/{deal_id}/claims",
        headers={
            "Authorization": f"Bearer {served.user_token('ann')}",
            "Idempotency-Key": "k2",
            "X-API-Key": "",
        },
    )
    assert refused.status_code == 409  # ann's second: over the per-customer limit
    wait_for_text(browser, "stock-left", "2 of 5", LIVE_SECONDS)
    wait_for_text(browser, "issued", "3", LIVE_SECONDS)
    wait_for_text(browser, "limit-reached", "1", LIVE_SECONDS)
    assert browser.find_element(By.ID, "chart").find_elements(By.TAG_NAME, "canvas")  # uPlot drew it
    check_page(browser, "deal-live")

    browser.get(f"{served.url}/console/deals")
    row = browser.find_element(By.XPATH, f"//tr[.//span[@class='id' and text()='{deal_id}']]")
    assert [cell.text for cell in row.find_elements(By.TAG_NAME, "td")][:4] == ["Active", "2 of 5", "3", "0"]
    check_page(browser, "deals")
    follow(browser, row.find_element(By.PARTIAL_LINK_TEXT, "Cancel"))
    check_page(browser, "deal-cancel-confirm")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button.danger"))
    row = browser.find_element(By.XPATH, f"//tr[.//span[@class='id' and text()='{deal_id}']]")
    assert row.find_element(By.CSS_SELECTOR, "span.status").text == "Cancelled"


def enrol(served: Served, device_id: str) -> SigningKey:
    key = SigningKey.generate(device_id)
    made = served.api("POST", "/v1/devices", json={"device_id": device_id, "public_key": public_jwk(key)})
    assert made.status_code == 201, made.text
    return key


def sync(served: Served, key: SigningKey, redemptions: list[dict[str, str]]) -> None:
    token = make_device_token(key, served.url)
    answer = served.api(
        "POST",
        "/v1/devices/sync",
        json={"redemptions": redemptions},
        headers={"Authorization": f"Bearer {token}", "X-API-Key": ""},
    )
    assert answer.status_code == 200, answer.text


def test_a_revoked_counter_is_marked_revoked(browser: Any, served: Served) -> None:
    device_id = f"till-{uuid.uuid4().hex[:6]}"
    sync(served, enrol(served, device_id), [])
    sign_in(browser, served)
    browser.get(f"{served.url}/console/counters")
    row = browser.find_element(By.ID, f"counter-{device_id}")
    assert row.find_element(By.CLASS_NAME, "device-status").text == "Active"
    assert "fresh" in row.text and "never" not in row.text  # it synced: its key set is fresh
    assert "shopcardd-provision enroll --merchant cafe" in browser.find_element(By.TAG_NAME, "pre").text
    check_page(browser, "counters")
    follow(browser, row.find_element(By.PARTIAL_LINK_TEXT, "Revoke"))
    check_page(browser, "counter-revoke-confirm")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button.danger"))
    row = browser.find_element(By.ID, f"counter-{device_id}")
    assert row.find_element(By.CLASS_NAME, "device-status").text == "Revoked"
    devices = {d["device_id"]: d["status"] for d in served.api("GET", "/v1/devices").json()["devices"]}
    assert devices[device_id] == "revoked"


def test_a_redeemed_voucher_shows_where_and_when(browser: Any, served: Served) -> None:
    deal = served.api(
        "POST",
        "/v1/deals",
        json={"title": "Pie", "stock": 3, "per_user_limit": 1, "voucher_ttl_seconds": 600},
    ).json()["deal_id"]
    token = served.user_token("dora")
    voucher = served.api(
        "POST",
        f"/v1/deals/{deal}/claims",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k1", "X-API-Key": ""},
    ).json()["voucher_id"]
    key, other = enrol(served, f"door-{uuid.uuid4().hex[:6]}"), enrol(served, f"back-{uuid.uuid4().hex[:6]}")
    until(lambda: served.api("GET", f"/v1/vouchers/{voucher}").status_code == 200, "the voucher is stored")
    redeemed = {"voucher_id": voucher, "deal_id": deal, "redeemed_at": "2026-12-01T10:00:00Z"}
    sync(served, key, [redeemed])
    sync(served, other, [{**redeemed, "redeemed_at": "2026-12-01T10:05:00Z"}])  # a conflict

    sign_in(browser, served)
    browser.get(f"{served.url}/console/vouchers")
    check_page(browser, "vouchers")
    browser.find_element(By.ID, "voucher_id").send_keys(voucher)
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form[role=search] button"))
    assert text_of(browser, "voucher-customer") == "dora"
    assert text_of(browser, "voucher-redeemed").startswith(f"at {key.kid} on 2026-12-01 10:00:00")
    assert text_of(browser, "voucher-revoked") == "no"
    check_page(browser, "voucher")
    follow(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Revoke this voucher"))
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button.danger"))
    assert text_of(browser, "voucher-revoked").startswith("yes, on ")

    browser.get(f"{served.url}/console/conflicts")
    assert voucher in browser.find_element(By.TAG_NAME, "main").text
    check_page(browser, "conflicts")


def test_a_form_without_its_csrf_token_is_refused(browser: Any, served: Served) -> None:
    sign_in(browser, served)
    browser.get(f"{served.url}/console/keys")
    check_page(browser, "keys")
    browser.execute_script(
        "document.querySelector(\"form[action='/console/keys'] input[name=csrf]\").remove()"
    )
    follow(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/console/keys'] button"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "That form was refused"
    assert served.api("GET", "/v1/deals").status_code == 200  # the key was not replaced


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, SHOPCARDD_CONSOLE_SESSION_SECONDS="2")


def test_a_session_past_its_expiry_is_sent_back_to_sign_in(browser: Any, short_sessions: Served) -> None:
    sign_in(browser, short_sessions)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Deals"

    def at_sign_in(driver: Any) -> bool:
        driver.get(f"{short_sessions.url}/console/counters")
        return "/console/sign-in" in driver.current_url

    WebDriverWait(browser, 30, poll_frequency=0.5).until(at_sign_in)
    browser.find_element(By.ID, "api_key").send_keys(short_sessions.api_key)
    follow(
        browser, browser.find_element(By.CSS_SELECTOR, "form button[type=submit]")
    )  # and on to the page asked for
    assert browser.current_url.endswith("/console/counters")


@pytest.fixture
def mailing(tmp_path: Path, mail_server: MailServer) -> Iterator[Served]:
    """A served backend whose notify worker emails the customers through ``mail_server``."""
    yield from serve(
        tmp_path, SHOPCARDD_SMTP_URL=mail_server.url, SHOPCARDD_MAIL_FROM="ShopCardd <vouchers@cafe.example>"
    )


def customer_token(served: Served, user: str, email: str) -> str:
    """A user token carrying an email address, as the identity provider gives one."""
    data_dir = Path(served.env["SHOPCARDD_DATA_DIR"])
    settings = Settings(_env_file=None, data_dir=data_dir, user_issuer="shopcardd-dev")  # type: ignore[call-arg]
    return mint_user_token(dev_identity_key(settings), settings.user_issuer, user, 600, email=email)


def test_the_notices_sent_to_a_deals_customers_show_live(
    browser: Any, mailing: Served, mail_server: MailServer
) -> None:
    mail_server.replies["bob@example.com"] = "550 5.1.1 No such mailbox"
    deal = mailing.api(
        "POST",
        "/v1/deals",
        json={"title": "Told cake", "stock": 5, "per_user_limit": 1, "voucher_ttl_seconds": 600},
    ).json()["deal_id"]
    sign_in(browser, mailing)
    browser.get(f"{mailing.url}/console/deals/{deal}")
    assert text_of(browser, "notices-email-sent") == "0"
    for user in ("ann", "bob", "cid"):
        token = customer_token(mailing, user, f"{user}@example.com")
        claimed = mailing.api(
            "POST",
            f"/v1/deals/{deal}/claims",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k1", "X-API-Key": ""},
        )
        assert claimed.status_code == 201, claimed.text
    wait_for_text(browser, "notices-email-sent", "2", LIVE_SECONDS)
    wait_for_text(browser, "notices-email-refused", "1", LIVE_SECONDS)
    assert text_of(browser, "notices-sms-sent") == "0"  # no SMS provider configured
    assert sorted(message["To"] for message in mail_server.inbox) == ["ann@example.com", "cid@example.com"]
    stats = mailing.api("GET", f"/v1/deals/{deal}/stats").json()
    assert stats["notices"]["email"] == {"sent": 2, "refused": 1}
