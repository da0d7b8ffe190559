"""How long a claim waits to be stored: the claims answered, a probe of the store, its samples.

``shopcardd-bench pipeline`` (the soak and the ``--rates`` sales) reads the end-to-end lag,
claim answered -> voucher document stored, with these.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class Answers:
    """The claims answered, in order: when each was answered and its voucher id."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.voucher_ids: list[str] = []
        self._lock = threading.Lock()

    def add(self, voucher_id: str) -> None:
        with self._lock:
            self.times.append(time.time())
            self.voucher_ids.append(voucher_id)


class StoredProbe:
    """How many of the answered claims, from the first, have their voucher stored.

    Looked up by ``_id`` alone, a binary search over the answers (the stages keep order
    closely, not exactly): a document count would do, but SecantusDB counts by walking the
    collection, and a count every 50 ms of 100,000 documents kept the server busier than the
    worker under test."""

    def __init__(self, collection: Any, answers: Answers) -> None:
        self.collection, self.answers = collection, answers
        self.stored = 0

    def _is_stored(self, index: int) -> bool:
        return self.collection.find_one({"_id": self.answers.voucher_ids[index]}, {"_id": 1}) is not None

    def __call__(self, upto: int | None = None) -> int:
        low, high = self.stored, len(self.answers.voucher_ids) if upto is None else upto
        while low < high:
            middle = (low + high) // 2
            if self._is_stored(middle):
                low = middle + 1
            else:
                high = middle
        self.stored = low
        return low


class Sampler:
    """The probe's count every 50 ms, in a thread: (seconds, count) pairs."""

    def __init__(self, probe: StoredProbe) -> None:
        self.probe = probe
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.probe()))
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def store_lags(answered: list[float], samples: list[tuple[float, int]]) -> list[float]:
    """Claim answered -> document stored, the k-th stored document standing for the k-th claim."""
    lags, k = [], 0
    for when, stored in samples:
        while k < min(stored, len(answered)):
            lags.append(max(0.0, when - answered[k]))
            k += 1
    return lags
