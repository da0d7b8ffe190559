"""The backend's answers as one line a person can read, for its two HTTP clients.

The counter (``shopcardd-device sync``) and the provisioning host (``shopcardd-provision
enroll``) both talk to the backend with requests and both print what went wrong in one line.
Both install this package; it imports no HTTP library itself (the objects come from the
caller's requests).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] [^'\"\])]+")
"""The operating system's reason inside urllib3's nested message, e.g. ``[Errno 111] Connection
refused`` in ``HTTPConnectionPool(...): Max retries exceeded ... (Caused by NewConnectionError(
'<...>: Failed to establish a new connection: [Errno 111] Connection refused'))``."""


def transport_reason(exc: requests.RequestException) -> str:
    """Why a request got no answer: the system's reason where urllib3 nested one, else the end
    of the message, without the quotes and brackets of the nesting; the error's class when empty."""
    text = str(exc)
    if not text:
        return type(exc).__name__
    found = _ERRNO_REASON.search(text)
    reason = (found.group(0) if found else text.split(": ")[-1]).strip("'\" ")
    while reason.endswith(")") and reason.count(")") > reason.count("("):  # the nesting's closers
        reason = reason[:-1].rstrip("'\" ")
    return reason[:200] or type(exc).__name__


def problem_detail(response: requests.Response) -> str:
    """An error answer's ``detail`` (the backend answers problem documents, RFC 9457), else the
    start of its body on one line, else its HTTP reason. A proxy's HTML error page (nginx's 413)
    is its HTTP reason: its markup says nothing more and would break the one-line reason."""
    try:
        body = response.json()
    except ValueError:
        if "html" in response.headers.get("Content-Type", ""):
            return response.reason or "no detail"
        return " ".join(response.text[:200].split()) or response.reason or "no detail"
    return str(body.get("detail", body))[:300] if isinstance(body, dict) else str(body)[:300]


def plain_http_refusal(url: str) -> str | None:
    """Why ``url`` may not be the backend's (plain http to a host off this machine), or ``None``.

    Whoever answers the backend's URL is believed at enrolment, and a sync over plain http can
    be answered by anyone on the path; only loopback (a backend on this machine, a test) is
    exempt. ``https://`` with a private CA takes ``ca_file``."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme != "http" or not parts.hostname:
        return f"must be the backend's URL, such as https://api.example.com, not {url!r}"
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return f"{url} is plain http to another machine: use https:// (a private CA goes in ca_file)"
