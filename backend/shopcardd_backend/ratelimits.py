"""Claim rate limits: so many claim requests per user, and per client address, in a fixed window.

A bot flood must be refused before the costly steps (a token's signature, the claim step, the
voucher's signature) and without slowing other customers' claims. So a request is counted in
the claim gate's store, where every API process sees the same counters (Redis: ``INCR`` of a
key of its own; SQLite: a file beside the gate's). A fixed window (aligned to the epoch) needs
one counter per limit; ``Retry-After`` is the time left in it. Once a counter is over its
limit, this process remembers it until the window ends (counts only grow within a window), so
a flood's further requests are refused without asking the store again.

Where a request is counted: ``standing`` gives its counters, and the claim's own step counts
them (``ClaimAttempt.rate_count``; on Redis in the claim script, saving the claim a round trip),
then ``verdict`` reads the counts. A request whose token fails its check has its address
counted in a step of its own (``check``). A request of an address remembered over its limit is
refused before its token's signature is checked. Over a limit, only a replay of a claim already
issued is answered (``ClaimAttempt.replay_only``), else ``rate_limited`` (``claims.ClaimService``
keeps this order).
A limit of 0 is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .gates.base import RateCount, RateCounter

Limited = Literal["user", "address"]
LIMITED_BY_INITIAL: Final[dict[str, Limited]] = {"u": "user", "a": "address"}
"""A counter is named ``INITIAL:WHO`` (``u:alice``, ``a:192.0.2.1``)."""
FORGET_AFTER: Final = 100_000
"""Over this many remembered refusals, the ones of past windows are dropped."""


@dataclass(frozen=True, slots=True)
class OverLimit:
    """Over a claim rate limit: ``which`` one, and ``retry_after`` seconds until its window ends."""

    which: Limited
    retry_after: int


Standing = OverLimit | RateCount | None
"""A claim request against the limits (``ClaimRateLimits.standing``): over one already, the
counters to count with its claim, or under no limit. The claim service reads it
(``claims.ClaimService``); nothing outside it does."""


class ClaimRateLimits:
    """``per_user`` and ``per_address`` claim requests per ``window`` seconds (0: no limit)."""

    def __init__(
        self,
        counter: RateCounter,
        per_user: int,
        per_address: int,
        window: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counter = counter
        self.limits: dict[Limited, int] = {"user": per_user, "address": per_address}
        self.window = window
        self.clock = clock
        self._over_until: dict[str, int] = {}
        """Counter name -> the end of the window in which it went over its limit."""

    def standing(self, address: str | None = None, user_id: str | None = None) -> Standing:
        """Where one claim request of ``address`` and ``user_id`` (None: not counted) stands: the
        refusal when a counter of it is remembered over its limit (it is counted no further),
        else the counters to count, or None when no limit applies."""
        now = int(self.clock())
        start = now - now % self.window
        names: list[str] = []
        limits: list[int] = []
        whom: tuple[tuple[Limited, str | None], ...] = (("address", address), ("user", user_id))
        for which, who in whom:
            if who is None or not self.limits[which]:
                continue
            name = f"{which[0]}:{who}"
            if self._over_until.get(name, 0) > now:
                return OverLimit(which, start + self.window - now)
            names.append(name)
            limits.append(self.limits[which])
        return RateCount(tuple(names), tuple(limits), start, self.window) if names else None

    def verdict(self, counted: RateCount, hits: Sequence[int]) -> OverLimit | None:
        """The refusal when a counter's new value ``hits`` is over its limit (remembered until
        its window ends), else None."""
        end = counted.window_start + counted.window_seconds
        now = int(self.clock())
        for name, limit, count in zip(counted.names, counted.limits, hits, strict=True):
            if count > limit:
                self._remember(name, end, now)
                return OverLimit(LIMITED_BY_INITIAL[name[0]], max(end - now, 1))
        return None

    async def check(self, address: str | None = None, user_id: str | None = None) -> OverLimit | None:
        """Count one claim request now, in a step of its own (``count_async``); the refusal when
        it is over a limit, else None."""
        standing = self.standing(address, user_id)
        if not isinstance(standing, RateCount):
            return standing
        names, start, seconds = standing.names, standing.window_start, standing.window_seconds
        return self.verdict(standing, await self.counter.count_async(names, start, seconds))

    def _remember(self, name: str, end: int, now: int) -> None:
        if len(self._over_until) >= FORGET_AFTER:
            self._over_until = {n: until for n, until in self._over_until.items() if until > now}
        self._over_until[name] = end
