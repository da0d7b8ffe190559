"""``shopcardd-provision tls``: a private certificate authority and one server certificate.

For a backend that counters reach by a name no public CA will certify (a shop's own server, a
rehearsal on loopback): nginx presents ``server.pem`` with ``server.key``, and the counters (and
any client) trust ``ca.pem``. The CA's private key is not kept: nothing more can be signed with
it, so a copy of ``ca.pem`` trusts this one server certificate and nothing else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shopcardd_voucher.keyfiles import write_atomically, write_private

from .keys import ProvisionError

CA_FILE: Final = "ca.pem"
CERT_FILE: Final = "server.pem"
KEY_FILE: Final = "server.key"
DEFAULT_DAYS: Final = 397
"""The longest a publicly trusted server certificate may live; a private one need not be longer."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    certificate: Path
    key: Path
    hosts: tuple[str, ...]


def _subject_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls(out: Path, hosts: list[str], days: int = DEFAULT_DAYS) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` (for every name in ``hosts``) and ``server.key`` (0600) into
    ``out``; refuses to replace a ``server.key`` already there."""
    if not hosts:
        raise ProvisionError("give at least one --host the server is reached by")
    if not 1 <= days <= 3650:
        raise ProvisionError(f"--days must be 1 to 3650, not {days}")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (out / KEY_FILE).exists():
        raise ProvisionError(f"{out / KEY_FILE} already exists; refusing to overwrite a private key")
    now = datetime.now(UTC) - timedelta(minutes=5)  # a client whose clock lags a little still trusts it
    until = now + timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ShopCardd private CA for {hosts[0]}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([_subject_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write_private(
        out / KEY_FILE,
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_atomically(out / CERT_FILE, server.public_bytes(pem).decode())
    write_atomically(out / CA_FILE, ca.public_bytes(pem).decode())
    return TlsFiles(out / CA_FILE, out / CERT_FILE, out / KEY_FILE, tuple(hosts))
