"""Claim rate limits: so many claim requests per user, and per client address, in a fixed window.

A bot flood must be refused before the costly steps (a token's signature, the claim step, the
voucher's signature) and without slowing other customers' claims. So a request is counted
first, in the claim gate's store, where every API process sees the same counters (Redis:
``INCR`` of a key of its own, pipelined with the claims in flight; SQLite: a file beside the
gate's). A fixed window (aligned to the epoch) needs one counter per limit; ``Retry-After`` is
the time left in it. Once a counter is over its limit, this process remembers it until the
window ends (counts only grow within a window), so a flood's further requests are refused
without asking the store again.

A limit of 0 is off. The use of a refusal is the API's (``api/deps.py``): over a limit, only a
replay of a claim already issued is answered (``ClaimAttempt.replay_only``), else 429.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal

from .gates.base import ClaimGate

Limited = Literal["user", "address"]
FORGET_AFTER: Final = 100_000
"""Over this many remembered refusals, the ones of past windows are dropped."""


class RateLimited(Exception):
    """Over a claim rate limit: ``which`` one, and ``retry_after`` seconds until its window ends."""

    def __init__(self, which: Limited, retry_after: int) -> None:
        super().__init__(f"over the claim rate limit per {which}; retry after {retry_after} s")
        self.which = which
        self.retry_after = retry_after


class ClaimRateLimits:
    """``per_user`` and ``per_address`` claim requests per ``window`` seconds (0: no limit)."""

    def __init__(
        self,
        gate: ClaimGate,
        per_user: int,
        per_address: int,
        window: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self.limits: dict[Limited, int] = {"user": per_user, "address": per_address}
        self.window = window
        self.clock = clock
        self._over_until: dict[str, int] = {}
        """Counter name -> the end of the window in which it went over its limit."""

    async def check(self, address: str | None = None, user_id: str | None = None) -> RateLimited | None:
        """Count one claim request of ``address`` and of ``user_id`` (None: not counted); the
        refusal when either is over its limit, else None. A request refused is counted no
        further: a counter remembered over its limit is not sent to the store."""
        now = int(self.clock())
        end = now - now % self.window + self.window
        counted: list[tuple[Limited, str]] = []
        whom: tuple[tuple[Limited, str | None], ...] = (("address", address), ("user", user_id))
        for which, who in whom:
            if who is None or not self.limits[which]:
                continue
            name = f"{which[0]}:{who}"
            if self._over_until.get(name, 0) > now:
                return RateLimited(which, end - now)
            counted.append((which, name))
        if not counted:
            return None
        hits = await self.gate.count_async([name for _, name in counted], end - self.window, self.window)
        for (which, name), count in zip(counted, hits, strict=True):
            if count > self.limits[which]:
                self._remember(name, end, now)
                return RateLimited(which, end - now)
        return None

    def _remember(self, name: str, end: int, now: int) -> None:
        if len(self._over_until) >= FORGET_AFTER:
            self._over_until = {n: until for n, until in self._over_until.items() if until > now}
        self._over_until[name] = end
