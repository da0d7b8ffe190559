"""The console's sign-in limits and key rotation, over HTTP without a browser (quicker to drive)."""

from __future__ import annotations

import re
from pathlib import Path

from api.conftest import build_settings
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
