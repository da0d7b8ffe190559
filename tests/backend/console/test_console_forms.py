"""The console's sign-in limits and key rotation, over HTTP without a browser (quicker to drive)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from api.conftest import Api, build_settings
from fastapi.testclient import TestClient

from shopcardd_backend.app import create_app
from shopcardd_backend.identity import register_merchant


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _sign_in(client: TestClient, api_key: str) -> tuple[int, str]:
    form = client.get("/console/sign-in")
    answer = client.post("/console/sign-in", data={"api_key": api_key, "csrf": _csrf(form.text)})
    return answer.status_code, answer.text


def test_repeated_wrong_keys_are_held_off_per_address(tmp_path: Path) -> None:
    settings = build_settings(tmp_path / "data", console_sign_in_attempts=2)
    with TestClient(create_app(settings)) as client:
        key = register_merchant(client.app.state.runtime.store, "cafe")  # type: ignore[attr-defined]
        for _ in range(2):
            status, page = _sign_in(client, "sck_guess")
            assert status == 401 and "That API key is not a merchant&#39;s key" in page
        status, page = _sign_in(client, "sck_guess")
        assert status == 429 and "Too many wrong keys from your address: try again in" in page
        status, _ = _sign_in(client, key)  # the right key too, until the window ends
        assert status == 429


def test_a_rotated_key_is_shown_once_and_the_old_one_lives_for_its_grace(tmp_path: Path) -> None:
    with TestClient(create_app(build_settings(tmp_path / "data"))) as client:
        old = register_merchant(client.app.state.runtime.store, "cafe")  # type: ignore[attr-defined]
        assert _sign_in(client, old)[0] == 200
        keys = client.get("/console/keys")
        rotated = client.post("/console/keys", data={"csrf": _csrf(keys.text), "grace_seconds": "3600"})
        assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
        new = re.search(r'id="new-key" readonly value="(sck_[^"]+)"', rotated.text)
        assert new, rotated.text
        for key in (old, new.group(1)):
            assert client.get("/v1/deals", headers={"X-API-Key": key}).status_code == 200
        assert "sck_" not in client.get("/console/keys").text  # shown once


RELAY_LINE = "2 claim events wait for the relay: is `shopcardd-backend relay` running?"


@pytest.mark.parametrize(
    "rabbitmq", [pytest.param(True, marks=pytest.mark.rabbitmq), False], ids=["rabbitmq-named", "embedded"]
)
def test_the_deals_page_says_when_no_relay_drains_the_claim_events(
    tmp_path: Path, request: pytest.FixtureRequest, rabbitmq: bool
) -> None:
    """With RabbitMQ named, claim events older than 30 s mean no relay runs (the figures stand
    still); on the embedded profile this process drains them itself, so the page says nothing."""
    amqp_url = request.getfixturevalue("amqp_url") if rabbitmq else None
    settings = build_settings(tmp_path / "data", amqp_url=amqp_url)
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        key = api.merchant_key("cafe")
        deal = api.create_deal(key)["deal_id"]
        for user in ("alice", "bob"):
            assert api.claim(deal, api.user_token(user), "k1").status_code == 201
        assert _sign_in(client, key)[0] == 200
        assert "wait for the relay" not in client.get("/console/deals").text  # just written
        client.app.state.runtime.clock = lambda: time.time() + 31  # type: ignore[attr-defined]
        page = client.get("/console/deals").text
        assert (RELAY_LINE in page) is rabbitmq
