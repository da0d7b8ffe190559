"""The SMS channel: a provider's HTTP API (requests): JSON ``{"to", "text"}`` POSTed with the API
key as a bearer token.

The answer decides: 2xx sent; 408, 429 and 5xx, a timeout or no connection are the provider
being slow, overloaded or down (``ChannelDown``: the same for every message); any other status
(400 for a number it cannot text, 401 for a key it does not know) is final. Redirects are not
followed: a POST must not be turned into a GET elsewhere. Errors name no URL (it may hold
credentials) and never the key.
"""

from __future__ import annotations

import requests
from pydantic import SecretStr

from ...events import ClaimIssued
from .base import ChannelDown, Message, SendRefused

RETRY_STATUSES = frozenset({408, 429})


class SmsChannel:
    name = "sms"

    def __init__(self, url: str, api_key: SecretStr, timeout: tuple[float, float] = (3.05, 10.0)) -> None:
        self.url = url
        self.timeout = timeout
        """Seconds to connect, and to wait for the answer."""
        self._api_key = api_key
        self._session: requests.Session | None = None

    def recipient(self, claim: ClaimIssued) -> str | None:
        return claim.phone

    def send(self, to: str, message: Message) -> None:
        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        try:
            response = self._session.post(
                self.url, json={"to": to, "text": message.text}, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            self.close()
            raise ChannelDown(f"the SMS provider cannot be reached ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        said = f"{status} {' '.join(response.text.split())[:120]}".rstrip()
        if status in RETRY_STATUSES or status >= 500:
            raise ChannelDown(f"the SMS provider answered {said}")
        raise SendRefused(f"the SMS provider refused the message ({said})")

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
