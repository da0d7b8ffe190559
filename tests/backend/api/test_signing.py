"""Voucher signing keys: made on first start in the data folder, private 0600, kept after."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shopcardd_backend import signing
from shopcardd_backend.app import create_app
from shopcardd_backend.signing import load_signer, new_kid
from shopcardd_provision.qr import qr_version
from shopcardd_voucher import KeySet, Reason, verify

from .conftest import Api, build_settings


def test_the_key_made_on_first_start_is_kept_and_published(tmp_path: Path) -> None:
    settings = build_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("m1"))["deal_id"]
        voucher = api.claim(deal, api.user_token("alice"), "k").json()
        first_jwks = client.get("/.well-known/jwks.json").json()
    private = list(settings.keys_dir.glob("*.private.pem"))
    assert len(private) == 1
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o600
    assert [k["alg"] for k in first_jwks["keys"]] == ["EdDSA"]
    assert all("d" not in k for k in first_jwks["keys"])
    with TestClient(create_app(settings)) as client:  # a restart signs with the same key
        assert client.get("/.well-known/jwks.json").json() == first_jwks
        replay = Api(client, settings).claim(deal, Api(client, settings).user_token("alice"), "k")
    assert replay.status_code == 200 and replay.json()["token"] == voucher["token"]
    keys = KeySet.from_jwks(first_jwks)
    assert verify(voucher["token"], keys, merchant="m1").reason is Reason.ACCEPTED


def test_another_algorithm_can_be_configured(tmp_path: Path) -> None:
    signer = load_signer(tmp_path / "keys", "ES256")
    assert signer.key.alg == "ES256"
    assert load_signer(tmp_path / "keys", "EdDSA").key.kid == signer.key.kid  # the existing key stays


def test_a_voucher_the_api_issues_with_8_character_ids_fits_qr_version_12(tmp_path: Path) -> None:
    """DESIGN: an EdDSA voucher with ids of about 8 characters is QR version 12 at level M; the
    kid the backend makes for itself must not push it over (a 7-character kid made it 13)."""
    settings = build_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        api = Api(client, settings)
        deal = api.create_deal(api.merchant_key("cafe-042"), voucher_ttl_seconds=366 * 86_400)
        assert len(deal["deal_id"]) == 8
        voucher = api.claim(deal["deal_id"], api.user_token("alice-01"), "k").json()
    assert qr_version(voucher["token"]) <= 12, len(voucher["token"])
    assert len(signing.load_signer(settings.keys_dir).key.kid) <= 6


def test_a_made_kid_is_short_and_never_one_already_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(len(new_kid()) <= 6 for _ in range(200))
    draws = iter("00000" + "11111")  # the first draw is taken, the second is not
    monkeypatch.setattr(signing.secrets, "choice", lambda alphabet: next(draws))
    assert new_kid({"k00000"}) == "k11111"
