"""The claim rate limits' counters on Redis: one key per counter and window, in its own slot.

``PREFIX:rate:W:NAME`` holds a counter's hits in the window that starts at W. On one Redis a
claim's counters are counted by the claim script itself (a claim's ``rate_count``: no round
trip of their own); on a cluster, and for ``count_async``, by the ``COUNT`` script.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import RateCount
from .redis_client import Call, RedisConnection

COUNT = """
local hits = {}
for i, key in ipairs(KEYS) do
  hits[i] = redis.call('INCR', key)
  if hits[i] == 1 then
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return hits
"""
"""One hit of each rate limit window counter named (KEYS: the counters; ARGV: seconds they live)."""


class RedisRateCounter(RedisConnection):
    """``RateCounter`` on Redis."""

    def _script_sources(self) -> dict[str, str]:
        return {**super()._script_sources(), "count": COUNT}

    async def count_async(self, names: Sequence[str], window_start: int, window_seconds: int) -> list[int]:
        """One ``COUNT`` call joining this turn's pipeline (a claim's counters go out in the same
        round trips as the other claims in flight); on a cluster, one per counter."""
        run, call = self._async_parts(), self._count_call(names, window_start, window_seconds)
        with self._mapped_errors():
            return [int(hits) for hits in await run(*call)]

    def _count_call(self, names: Sequence[str], window_start: int, window_seconds: int) -> Call:
        """The COUNT script's call for these counters; they live twice the window (a clock
        behind by most of one still finds its counter)."""
        keys = [f"{self.prefix}:rate:{window_start}:{name}" for name in names]
        return "count", keys, [2 * window_seconds]

    def _counting(self, counted: RateCount) -> Call:
        return self._count_call(counted.names, counted.window_start, counted.window_seconds)
