"""What the backend's two HTTP clients print when a request gets no answer: the reason, whole,
without the quotes and brackets of urllib3's nesting (``shopcardd_commands.answers``)."""

from __future__ import annotations

import pytest
import requests

from shopcardd_commands.answers import transport_reason

NESTED = (
    "HTTPConnectionPool(host='10.0.0.7', port=8000): Max retries exceeded with url: /v1/sync (Caused by "
    "NameResolutionError(\"HTTPConnection(host='backend.shop', port=80): Failed to resolve 'backend.shop' "
    "([Errno -2] Name or service not known)\"))"
)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (requests.ConnectionError(NESTED), "[Errno -2] Name or service not known"),
        (
            requests.ReadTimeout("HTTPConnectionPool(host='x', port=80): Read timed out. (read timeout=10)"),
            "Read timed out. (read timeout=10)",
        ),
        (requests.ConnectionError(), "ConnectionError"),
    ],
)
def test_the_reason_of_a_request_that_got_no_answer(error: requests.RequestException, reason: str) -> None:
    assert transport_reason(error) == reason
