"""`shopcardd-provision tls`: a client that trusts ca.pem reaches a server presenting server.pem, by
every name the certificate was made for, and by no other."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from .test_provision_cli import provision


def _serve_once(folder: Path) -> int:
    """A TLS server on loopback presenting the made certificate to one client; its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with listener:
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate: its own side of the test says so

    threading.Thread(target=answer, daemon=True).start()
    return int(listener.getsockname()[1])


def _handshake(folder: Path, name: str) -> bytes:
    context = ssl.create_default_context(cafile=folder / "ca.pem")
    with (
        socket.create_connection(("127.0.0.1", _serve_once(folder)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return tls.recv(5)


def test_a_client_trusting_the_ca_reaches_the_server_by_each_of_its_names(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    provision("tls", "--out", folder, "--host", "localhost", "--host", "127.0.0.1")
    assert stat.S_IMODE((folder / "server.key").stat().st_mode) == 0o600
    assert _handshake(folder, "localhost") == b"hello"
    assert _handshake(folder, "127.0.0.1") == b"hello"
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(folder, "shop.example.com")


def test_a_client_without_the_ca_refuses_the_server(tmp_path: Path) -> None:
    provision("tls", "--out", tmp_path, "--host", "localhost")
    context = ssl.create_default_context()  # the system's CAs only
    with (
        socket.create_connection(("127.0.0.1", _serve_once(tmp_path)), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_a_second_run_keeps_the_first_key(tmp_path: Path) -> None:
    provision("tls", "--out", tmp_path, "--host", "localhost")
    key = (tmp_path / "server.key").read_bytes()
    again = provision("tls", "--out", tmp_path, "--host", "localhost", ok=False)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "server.key").read_bytes() == key


class _Refusing(BaseHTTPRequestHandler):
    """Answers every request 404: the tests below care only that the TLS handshake succeeded."""

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _refuse(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _refuse


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server on loopback with a certificate of a private CA; its URL and the CA file."""
    provision("tls", "--out", tmp_path / "tls", "--host", "localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://localhost:{server.server_address[1]}", tmp_path / "tls" / "ca.pem"
    server.shutdown()
    server.server_close()


def test_enrolment_and_sync_trust_the_ca_file_even_where_requests_ca_bundle_is_set(
    https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many machines set REQUESTS_CA_BUNDLE to the system's CAs, and requests lets it override a
    session's own CA file: the private CA given by --ca-file (enrol) and ca_file (sync) must win."""
    import certifi

    from shopcardd_device.sync import BackendClient, SyncFailed
    from shopcardd_provision.enroll import _call
    from shopcardd_voucher import SigningKey

    url, ca = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    with requests.Session() as http:
        http.verify = str(ca)
        assert _call(http, "GET", f"{url}/.well-known/jwks.json").status_code == 404  # reached, not refused
    key = SigningKey.generate("till-1", "EdDSA")
    client = BackendClient(url, key, key.verification_key(), timeout=10, ca_file=str(ca))
    with pytest.raises(SyncFailed, match="404"):  # an answer: the handshake trusted the CA file
        client.sync({"redemptions": []})
    client.close()
