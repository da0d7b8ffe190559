"""Genuinely signed vouchers made to break the counter: huge times, terminal escapes in ids.

A leaked key (or a bug in an issuer) can sign anything; the counter must still answer with a
reason code on one escaped line, never a traceback and never raw control characters.
"""

from __future__ import annotations

import json
import string

import pytest

from .conftest import MERCHANT, Keys, WriteConfig, device_command

NOW_ISH = 1_800_000_000


def genuine(keys: Keys, **claims: object) -> str:
    """A token with a genuine signature over any claims, as a leaked key would sign them."""
    import jwt
    from jwt.utils import base64url_encode

    body = {"jti": "v-hostile", "deal": "d1", "sub": "u1", "mid": MERCHANT, "iat": NOW_ISH}
    body["exp"] = NOW_ISH + 60
    body |= claims
    head = base64url_encode(json.dumps({"alg": "EdDSA", "kid": "k1"}).encode())
    signing_input = head + b"." + base64url_encode(json.dumps(body).encode())
    signature = jwt.get_algorithm_by_name("EdDSA").sign(signing_input, keys.signing.private_key)
    return (signing_input + b"." + base64url_encode(signature)).decode()


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": 2**63},
        {"exp": 2**64},
        {"iat": -(2**63) - 1},
        {"nbf": 2**63},
        {"jti": "v\x1b[2J\x1b[32mACCEPTED\x1b[0m"},
        {"deal": "d\x07\x1b]0;owned\x07"},
        {"deal": "d1\nshopcardd-device: accepted"},
        {"jti": "v\u202e1"},
    ],
    ids=ascii,
)
@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_verify_answers_a_hostile_genuine_voucher_with_a_reason_on_one_escaped_line(
    write_config: WriteConfig, keys: Keys, claims: dict[str, object], json_output: bool
) -> None:
    token = genuine(keys, **claims)
    result = device_command("verify", "--config", write_config(), *(["--json"] if json_output else []), token)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert set(line) <= set(string.printable) - set("\t\r\x0b\x0c")
    verdict = json.loads(line)["result"] if json_output else line.split()[0]
    assert verdict == "bad_format"
