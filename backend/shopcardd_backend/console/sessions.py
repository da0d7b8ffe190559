"""Console sign-in: the merchant's API key in, a session cookie out.

The key is checked once, at sign-in, and never kept: the browser holds a random session token
in an HttpOnly cookie (no script can read it), the store only its hash, with the merchant and
the expiry. Each form carries a CSRF token derived from the session token (an HMAC), so a page
of another site cannot post in the merchant's name even where SameSite=Strict is not honoured.
Wrong keys are counted per client address with the claim rate limits' machinery, in a counter
of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..gates.base import RateCounter
from ..identity import hash_api_key
from ..ratelimits import ClaimRateLimits, OverLimit
from ..stores.base import ConsoleSession, DocumentStore


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    """The CSRF token of the forms of a session (or of the sign-in form, from its own cookie)."""
    return hmac.new(secret.encode(), b"shopcardd console form", hashlib.sha256).hexdigest()


def csrf_matches(secret: str | None, sent: str | None) -> bool:
    return bool(secret) and bool(sent) and hmac.compare_digest(csrf_token(secret or ""), sent or "")


@dataclass(frozen=True, slots=True)
class SignedIn:
    merchant_id: str
    token: str
    """The session cookie's value (its CSRF token is ``csrf_token(token)``)."""


class WrongKey(Exception):
    """The API key is not a merchant's key (the attempt was counted)."""


class TooManyWrongKeys(Exception):
    """This address tried too many wrong keys: no key is checked for ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many wrong keys: try again in {retry_after} seconds")
        self.retry_after = retry_after


class ConsoleSessions:
    def __init__(
        self,
        store: DocumentStore,
        rate_counter: RateCounter,
        lifetime_seconds: int,
        attempts: int,
        window_seconds: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.lifetime = timedelta(seconds=lifetime_seconds)
        self.now = now
        # Counted in the claim gate's store like the claim limits, under a name of their own.
        self.wrong_keys = ClaimRateLimits(rate_counter, 0, attempts, window_seconds)

    async def sign_in(self, api_key: str, address: str | None) -> SignedIn:
        """A new session for the key's merchant; ``WrongKey``, or ``TooManyWrongKeys`` when this
        address tried too many wrong keys (then the key is not even checked)."""
        who = f"console-sign-in:{address}"
        over = self.wrong_keys.standing(who)
        if isinstance(over, OverLimit):
            raise TooManyWrongKeys(over.retry_after)
        key_hash = hash_api_key(api_key.strip())
        merchant = await asyncio.to_thread(self.store.merchant_for_key_hash, key_hash) if api_key else None
        if merchant is None:
            over = await self.wrong_keys.check(who)
            if over is not None:
                raise TooManyWrongKeys(over.retry_after)
            raise WrongKey("that API key is not a merchant's key")
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(_hash(token), merchant, self.now() + self.lifetime)
        await asyncio.to_thread(self.store.add_console_session, session)
        return SignedIn(merchant, token)

    def signed_in(self, token: str | None) -> SignedIn | None:
        """The session of a cookie, unless it is unknown, signed out or expired."""
        if not token or len(token) > 100:
            return None
        session = self.store.console_session(_hash(token), self.now())
        return None if session is None else SignedIn(session.merchant_id, token)

    def sign_out(self, token: str) -> None:
        self.store.end_console_session(_hash(token))
