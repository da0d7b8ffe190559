"""The two keys of a sync: the device's own (``device_key``, Ed25519), which signs each request's
token, and the backend's trust key (``trust_key``, pinned at enrolment), which must sign each
answer. Any problem with either is a configuration error (exit 2), found before a request is sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from shopcardd_voucher import InvalidKeyError, SigningKey, VerificationKey

from .config import DeviceConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .ledger import Ledger


def load_trust_key(config: DeviceConfig, ledger: Ledger) -> VerificationKey:
    """The trust key sync answers must be signed by: the bundle's pin (``trust_key``), or the key
    the ledger moved the pin to by a chain of links from it. Problems are configuration errors."""
    if config.trust_key is None:
        raise ConfigError(
            "trust_key: not set; sync believes only answers signed by the backend's trust key "
            "(shopcardd-provision enroll pins it)"
        )
    try:
        pinned = VerificationKey.from_jwk(json.loads(config.trust_key.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"trust_key: cannot read {config.trust_key}: {exc.strerror}") from None
    except (ValueError, InvalidKeyError) as exc:
        raise ConfigError(
            f"trust_key: {config.trust_key} is not a public JWK with kid and alg: {exc}"
        ) from None
    return ledger.trust_key(pinned)


def load_device_key(config: DeviceConfig) -> SigningKey:
    """The device's Ed25519 key (``device_key``); any problem is a configuration error (exit 2)."""
    if config.backend_url is None:
        raise ConfigError("backend_url: not set; sync needs the backend's URL (shopcardd-provision enroll)")
    if config.device_key is None:
        raise ConfigError("device_key: not set; sync signs its requests with the device's key from enrolment")
    try:
        key = SigningKey.load(config.device_id, config.device_key)
    except OSError as exc:
        raise ConfigError(f"device_key: cannot read {config.device_key}: {exc.strerror}") from None
    except InvalidKeyError as exc:
        raise ConfigError(f"device_key: {config.device_key}: {exc}") from None
    if key.alg != "EdDSA":
        raise ConfigError(f"device_key: {config.device_key} is a {key.alg} key; a device key is Ed25519")
    return key
