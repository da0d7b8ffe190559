"""``shopcardd-provision enroll``: give a counter device its identity and its first key set.

Makes the device's Ed25519 key pair here (the private half never crosses the network),
registers the public half with the backend under the merchant's API key (``POST /v1/devices``),
fetches the voucher key set (``GET /.well-known/jwks.json``) and the backend's trust key
(``GET /.well-known/shopcardd-trust-key.json``) and writes the device's bundle:

- ``device.toml``: the device configuration (docs/device.md) naming the files below by
  paths relative to itself, so the folder can be copied to ``/etc/shopcardd/`` as it is;
- ``device.private.pem``: the device key (0600; the folder is 0700);
- ``jwks.json``: the voucher key set the counter verifies with until its first sync;
- ``trust-key.json``: the trust key pinned: the counter believes only sync answers it signed
  (or a key it announced);
- ``ca.pem``, with ``--ca-file``: the private CA of the backend's https certificate.

What enrolment fetches decides what the counter trusts, so the backend is reached over https
(a private CA through ``ca_file``), unless it is on loopback.

Nothing in the folder is ever overwritten: a bundle already there is refused before the backend
is asked anything. The key set is fetched first, so an unreachable backend leaves nothing
behind, and a refused enrolment removes the key it made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import requests

from shopcardd_commands.answers import plain_http_refusal, problem_detail, transport_reason
from shopcardd_voucher import InvalidKeyError, KeySet, SigningKey, VerificationKey
from shopcardd_voucher.device_auth import public_jwk
from shopcardd_voucher.keyfiles import write_atomically, write_private

from .keys import ProvisionError

CONFIG_FILE: Final = "device.toml"
KEY_FILE: Final = "device.private.pem"
KEYSET_FILE: Final = "jwks.json"
TRUST_FILE: Final = "trust-key.json"
CA_FILE: Final = "ca.pem"
BUNDLE: Final = (CONFIG_FILE, KEY_FILE, KEYSET_FILE, TRUST_FILE)
DEFAULT_DATA_DIR: Final = "/var/lib/shopcardd"
TIMEOUT_SECONDS: Final = 15.0


class EnrolFailed(ProvisionError):
    """The backend could not be reached or refused the enrolment: a run-time failure (exit 1)."""


@dataclass(frozen=True)
class Bundle:
    folder: Path
    device_id: str
    merchant_id: str
    kids: list[str]


def backend_url(text: str) -> str:
    """The backend's base URL as the device will use it (and sign its tokens' ``aud`` with)."""
    url = text.strip().rstrip("/")
    refusal = plain_http_refusal(url)
    if refusal:
        raise ValueError(f"--backend {refusal}")
    return url


def enroll(
    merchant_id: str,
    device_id: str,
    backend: str,
    out: Path,
    api_key: str,
    data_dir: str = DEFAULT_DATA_DIR,
    ca_file: Path | None = None,
) -> Bundle:
    """Enrol ``device_id`` for ``merchant_id`` at ``backend`` and write its bundle into ``out``;
    ``ca_file``: the CA certificates (PEM) that sign the backend's https certificate."""
    backend = backend_url(backend)
    ca_pem = None
    if ca_file is not None:
        try:
            ca_pem = ca_file.read_text(encoding="ascii")
        except (OSError, UnicodeError) as exc:
            raise ProvisionError(f"--ca-file {ca_file}: cannot read it: {exc}") from None
    taken = [name for name in (*BUNDLE, CA_FILE) if (out / name).exists()]
    if taken:
        raise EnrolFailed(
            f"{out} already holds a device bundle ({', '.join(taken)}); refusing to overwrite it"
        )
    made_folder = not out.exists()
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(out, 0o700)  # it holds a private key
    except OSError as exc:
        raise ProvisionError(f"cannot use {out} for the bundle: {exc.strerror}") from None
    try:
        return _enroll(merchant_id, device_id, backend, out, api_key, data_dir, ca_file, ca_pem)
    except BaseException:
        if made_folder and not any(out.iterdir()):
            out.rmdir()
        raise


def _enroll(
    merchant_id: str,
    device_id: str,
    backend: str,
    out: Path,
    api_key: str,
    data_dir: str,
    ca_file: Path | None,
    ca_pem: str | None,
) -> Bundle:
    with requests.Session() as http:
        if ca_file is not None:
            http.verify = str(ca_file)
        keyset = _fetch_keyset(http, backend)
        trust = _fetch_trust_key(http, backend)
        key = SigningKey.generate(device_id, "EdDSA")
        write_private(out / KEY_FILE, key.to_pem())
        try:
            _register(http, backend, api_key, merchant_id, device_id, public_jwk(key))
        except BaseException:
            (out / KEY_FILE).unlink()
            raise
    write_atomically(out / KEYSET_FILE, keyset.to_json())
    write_atomically(out / TRUST_FILE, json.dumps(trust.to_jwk(), indent=2, sort_keys=True) + "\n")
    if ca_pem is not None:
        write_atomically(out / CA_FILE, ca_pem)
    toml = device_toml(device_id, merchant_id, backend, data_dir, ca_pem is not None)
    write_atomically(out / CONFIG_FILE, toml)
    return Bundle(out, device_id, merchant_id, keyset.kids)


def _call(http: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    try:
        # verify per request: requests lets REQUESTS_CA_BUNDLE override the session's --ca-file.
        return http.request(method, url, timeout=TIMEOUT_SECONDS, verify=http.verify, **kwargs)
    except requests.RequestException as exc:
        raise EnrolFailed(f"cannot reach the backend at {url} ({transport_reason(exc)})") from None


def _fetch_keyset(http: requests.Session, backend: str) -> KeySet:
    url = f"{backend}/.well-known/jwks.json"
    response = _call(http, "GET", url)
    if response.status_code != 200:
        raise EnrolFailed(
            f"{url} answered HTTP {response.status_code}, not the voucher key set: is it a ShopCardd backend?"
        )
    try:
        keyset = KeySet.from_jwks(response.content)
    except InvalidKeyError as exc:
        raise EnrolFailed(f"{url} did not give a usable voucher key set: {exc}") from None
    if not len(keyset):
        raise EnrolFailed(f"{url} gave an empty key set: the backend has no signing key yet")
    return keyset


def _fetch_trust_key(http: requests.Session, backend: str) -> VerificationKey:
    url = f"{backend}/.well-known/shopcardd-trust-key.json"
    response = _call(http, "GET", url)
    if response.status_code != 200:
        raise EnrolFailed(f"{url} answered HTTP {response.status_code}, not the backend's trust key")
    try:
        return VerificationKey.from_jwk(response.json())
    except (ValueError, InvalidKeyError) as exc:
        raise EnrolFailed(f"{url} did not give a usable trust key: {exc}") from None


def _register(
    http: requests.Session, backend: str, api_key: str, merchant_id: str, device_id: str, jwk: dict[str, str]
) -> None:
    body = {"device_id": device_id, "public_key": jwk, "merchant_id": merchant_id}
    response = _call(http, "POST", f"{backend}/v1/devices", json=body, headers={"X-API-Key": api_key})
    if response.status_code == 201:
        return
    detail = problem_detail(response)
    why = {
        401: f"the backend refused the merchant's API key ({detail}); check SHOPCARDD_API_KEY",
        403: f"the backend refused the enrolment for merchant {merchant_id!r}: {detail}",
        409: f"device {device_id!r} is enrolled already; choose another --device (a revoked id stays taken)",
        422: f"the backend refused the device key or id: {detail}",
    }.get(response.status_code, f"the backend answered HTTP {response.status_code}: {detail}")
    raise EnrolFailed(why)


def device_toml(device_id: str, merchant_id: str, backend: str, data_dir: str, with_ca: bool = False) -> str:
    """The device's configuration; JSON strings are valid TOML basic strings."""
    when = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    q = json.dumps
    ca = f"ca_file = {q(CA_FILE)}                  # the private CA of the backend's https certificate\n"
    return f"""\
# Written by shopcardd-provision enroll at {when}. Paths are relative to this file.
device_id = {q(device_id)}
merchant_id = {q(merchant_id)}
data_dir = {q(data_dir)}                 # the ledger lives here
keyset = {q(KEYSET_FILE)}                # voucher keys until the first sync (then kept in the ledger)
backend_url = {q(backend)}               # sync tokens are signed for this audience
device_key = {q(KEY_FILE)}               # this device's Ed25519 key (0600): signs its sync tokens
trust_key = {q(TRUST_FILE)}               # the backend's trust key: sync believes only answers it signed
{ca if with_ca else ""}"""
