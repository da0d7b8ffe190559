"""What the appliance suites share: the repository's folders, the tools they run, a counter's bundle.

A tool the machine lacks skips the test with the reason on a laptop and fails it under CI=true
(``service_missing``): `make test` installs them (target appliance-tools: debootstrap,
qemu-user-static, binfmt-support, systemd, nginx) and registers qemu's arm64 interpreter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import service_missing

from shopcardd_provision.keys import keygen
from shopcardd_voucher import SigningKey, issue

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
MERCHANT = "m-corner-cafe"


def require_tool(name: str, package: str) -> str:
    """The path of ``name``, or a skip (a failure in CI) that says which package brings it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        service_missing(f"{name} is not installed (apt-get install {package}; make test does as root)")
    return str(found)


def systemd_analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """systemd-analyze needs no running systemd for `verify` and `security --offline=true`."""
    exe = require_tool("systemd-analyze", "systemd")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=120)


@dataclass(frozen=True)
class Bundle:
    """What enrolment hands an operator for one counter, and the key that signs its vouchers."""

    folder: Path
    signing: SigningKey

    def voucher(self, merchant: str = MERCHANT) -> str:
        return issue(self.signing, deal="d-espresso", merchant=merchant, user="u-1", ttl=3600)


def make_bundle(folder: Path, device_id: str = "counter-1") -> Bundle:
    """device.toml, jwks.json (the voucher keys), trust-key.json (the backend's trust key) and
    device.private.pem (the device's own key), as a counter finds them installed: paths under
    /etc/shopcardd and /var/lib/shopcardd."""
    keys, device_key = folder / "voucher-keys", folder / "device-key"
    made = keygen("EdDSA", "k1", keys)
    device = keygen("EdDSA", device_id, device_key)
    bundle = folder / "bundle"
    bundle.mkdir()
    shutil.copy(keys / "jwks.json", bundle / "jwks.json")
    shutil.copy(device.private_key_path, bundle / "device.private.pem")
    trust = SigningKey.generate("trust-1").verification_key()  # the backend's, pinned at enrolment
    (bundle / "trust-key.json").write_text(json.dumps(trust.to_jwk()))
    (bundle / "device.toml").write_text(
        f'device_id = "{device_id}"\nmerchant_id = "{MERCHANT}"\n'
        'data_dir = "/var/lib/shopcardd"\nkeyset = "/etc/shopcardd/jwks.json"\n'
        'device_key = "/etc/shopcardd/device.private.pem"\ntrust_key = "/etc/shopcardd/trust-key.json"\n'
    )
    return Bundle(bundle, SigningKey.load("k1", made.private_key_path))
