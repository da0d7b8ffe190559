"""``run_until_stopped``: the loop every background job of the backend runs in.

The relay, the embedded profile's in-process pipeline and the API's refusal tally all do the
same thing: a step, again at once while there is work, after a short wait when there is none,
and with backoff while a store or the broker is down, logged once per outage, not once per try.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("shopcardd_backend.loops")


def run_until_stopped(
    step: Callable[[], int],
    stop: threading.Event,
    *,
    what: str,
    idle_wait: float = 0.05,
    max_backoff: float = 10.0,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Call ``step`` (it returns how much it did) until ``stop`` is set; a step in hand finishes.
    A ``ConnectionError`` from the step (``TransientError``: a gate, store or broker that does
    not answer) waits and tries again; any other error ends the loop, as a bug should."""
    failures = 0
    while not stop.is_set():
        try:
            done = step()
        except ConnectionError as exc:
            if failures == 0:
                log.warning(f"{what}: a dependency does not answer; retrying", extra={"error": str(exc)})
            stop.wait(min(max_backoff, 0.2 * 2**failures))
            failures += 1
            continue
        if failures:
            log.info(f"{what}: working again", extra={"after_attempts": failures})
            failures = 0
        if done and on_progress is not None:
            on_progress(done)
        if not done:
            stop.wait(idle_wait)


class Background:
    """Steps run in daemon threads until ``close()``: the API process's own background jobs."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, step: Callable[[], int], *, what: str, idle_wait: float) -> None:
        thread = threading.Thread(
            target=run_until_stopped,
            args=(step, self.stop),
            kwargs={"what": what, "idle_wait": idle_wait},
            name=what,
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)
