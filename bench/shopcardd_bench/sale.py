"""A flash sale's customers, as the rehearsal sends them through nginx: HTTP/2 over TLS, many
users of whom most claim once, some tap again (the same Idempotency-Key: the same voucher), and
an app that tries a claim again, with the same key, when it got no answer or a 502/503/504.

Every attempt is kept (``Attempt``: when, how long, the status), and every claim's final answer
(``Claim``), so the checks can hold each voucher answered 201 against the store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RETRIED = {0, 502, 503, 504}
"""Statuses an app tries again with the same key (0: no answer at all)."""
TRIES = 6
REQUESTS_PER_CONNECTION = 800


@dataclass(frozen=True)
class Attempt:
    at: float
    seconds: float
    status: int
    code: str
    detail: str = ""
    """What a 5xx answer said (its problem document's detail), for the report."""


@dataclass(frozen=True)
class Claim:
    deal_id: str
    user: str
    key: str
    status: int
    voucher_id: str | None
    token: str | None


@dataclass
class Tally:
    """What the customers saw, shared between the sale's thread and the rehearsal's."""

    attempts: list[Attempt] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    protocols: Counter[str] = field(default_factory=Counter)
    """Answers by HTTP version (nginx speaks HTTP/2 to the customers)."""
    replays: list[Claim] = field(default_factory=list)
    """The second answers of customers who tapped again with the same key."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Sale:
    """``users`` customers claim ``deals[0]`` (the hot deal) or the others in turn, at most
    ``in_flight`` at a time over ``connections`` HTTP/2 connections, until ``stop`` is set;
    ``on_voucher`` hears of every voucher answered 201 (the shop scans some of them)."""

    def __init__(
        self,
        url: str,
        ca_file: str,
        deals: list[str],
        token_for: Callable[[int], str],
        in_flight: int,
        connections: int,
        on_voucher: Callable[[Claim], None],
    ) -> None:
        self.url, self.ca_file, self.deals = url, ca_file, deals
        self.token_for, self.in_flight, self.connections = token_for, in_flight, connections
        self.on_voucher = on_voucher
        self.tally = Tally()
        self.stop = threading.Event()
        self._next_user = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join()

    async def _run(self) -> None:
        self._clients: list[Any] = [self._connect() for _ in range(self.connections)]
        self._uses = [0] * self.connections
        self._retired: list[Any] = []
        try:
            await asyncio.gather(*(self._customer(n % self.connections) for n in range(self.in_flight)))
        finally:
            for client in self._clients + self._retired:
                await client.aclose()

    def _connect(self) -> Any:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.AsyncClient(
            http2=True, verify=self.ca_file, timeout=30, limits=limits, base_url=self.url
        )

    def _client(self, slot: int) -> Any:
        """The connection of ``slot``, a new one after REQUESTS_PER_CONNECTION requests: nginx closes
        an HTTP/2 connection after 1000 (keepalive_requests) and the requests racing its GOAWAY fail.
        A phone sends a few claims on a connection; only a load generator meets that limit."""
        if self._uses[slot] >= REQUESTS_PER_CONNECTION:
            self._retired.append(self._clients[slot])  # its requests in flight finish; closed at the end
            self._clients[slot], self._uses[slot] = self._connect(), 0
        self._uses[slot] += 1
        return self._clients[slot]

    async def _customer(self, slot: int) -> None:
        while not self.stop.is_set():
            number = self._next_user
            self._next_user += 1
            deal = self.deals[0] if number % 2 == 0 else self.deals[1 + number % (len(self.deals) - 1)]
            user, key = f"u{number}", f"claim-{number}"
            client = self._client(slot)
            claim = await self._claim(client, deal, number, user, key)
            if claim.status == 201:
                self.on_voucher(claim)
                if number % 10 == 0:  # a customer who taps again gets the same voucher
                    again = await self._claim(self._client(slot), deal, number, user, key, replay=True)
                    with self.tally.lock:
                        self.tally.replays.append(again)

    async def _claim(
        self, client: object, deal: str, number: int, user: str, key: str, replay: bool = False
    ) -> Claim:
        import httpx

        assert isinstance(client, httpx.AsyncClient)
        headers = {"Authorization": f"Bearer {self.token_for(number)}", "Idempotency-Key": key}
        status, body, wait = 0, {}, 0.2
        for _ in range(TRIES):
            started = time.time()
            begun = time.perf_counter()
            try:
                answer = await client.post(f"/v1/deals/{deal}/claims", headers=headers)
                status = answer.status_code
                with self.tally.lock:
                    self.tally.protocols[answer.http_version] += 1
                wait = float(answer.headers.get("retry-after", "0.2"))
                body = answer.json() if answer.headers.get("content-type", "").endswith("json") else {}
            except (httpx.HTTPError, ValueError) as exc:
                status, body = 0, {"code": type(exc).__name__}
            with self.tally.lock:
                code = str(body.get("code", "")) if status >= 300 or status == 0 else ""
                detail = str(body.get("detail", ""))[:100] if status >= 500 or status == 0 else ""
                self.tally.attempts.append(
                    Attempt(started, time.perf_counter() - begun, status, code, detail)
                )
            if status not in RETRIED or self.stop.is_set():
                break
            await asyncio.sleep(min(wait, 2.0))  # as Retry-After says
        claim = Claim(deal, user, key, status, body.get("voucher_id"), body.get("token"))
        if not replay:
            with self.tally.lock:
                self.tally.claims.append(claim)
        return claim
