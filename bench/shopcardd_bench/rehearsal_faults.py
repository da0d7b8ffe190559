"""The rehearsal's fault schedule: what fails when during the sale (a Redis primary, an API
process, a relay, the persist worker, the RabbitMQ node leading its queue, a counter cut off and
reconnected), in order, with the run's own probes (vouchers redeemed twice, the LAN) among them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .rehearsal_topology import Topology
from .services import Process

RESTART_AFTER = 3.0
"""Seconds a killed API process, relay or worker stays down before it is started again."""


def _restart_later(top: Topology, process: Process, what: str) -> None:
    process.kill()
    top.mark(f"SIGKILL {what}")

    def again() -> None:
        time.sleep(RESTART_AFTER)
        process.start()
        top.mark(f"started {what} again")

    threading.Thread(target=again, daemon=True).start()


@dataclass
class Fault:
    at: float
    what: str
    act: Callable[[], None]


def schedule(
    top: Topology,
    shop: Any,
    hot_deal: str,
    seconds: int,
    doubles: Callable[[], None],
    doubles_done: threading.Event,
    lan_probe: Callable[[], None],
) -> list[Fault]:
    """The faults of a sale of ``seconds``, in order."""
    from shopcardd_backend.gates.redis import bucket_tag

    def kill_redis_primary() -> None:
        slot = int(top.redis.cli(next(iter(top.redis.nodes)), "CLUSTER", "KEYSLOT", bucket_tag(hot_deal, 0)))
        port = top.redis.port_of_slot(slot)
        top.redis.nodes[port].kill()
        top.mark(f"SIGKILL Redis primary :{port} (the hot deal's bucket 0); its replica takes over")

    def stop_persist_leader() -> None:
        leader = top.rabbit.leader_of("shopcardd.persist")
        top.mark(f"stop RabbitMQ node {leader.node} (leads shopcardd.persist)")
        leader.stop()

        def again() -> None:
            time.sleep(max(2.0, seconds * 0.1))
            leader.start()
            top.mark(f"RabbitMQ node {leader.node} started again")

        threading.Thread(target=again, daemon=True).start()

    cut = shop.counters[-1]
    return [
        Fault(0.12 * seconds, "SIGKILL a Redis primary", kill_redis_primary),
        Fault(0.16 * seconds, "a voucher redeemed at one counter is brought to the next", lan_probe),
        Fault(
            0.22 * seconds,
            "SIGKILL an API process, start it again",
            lambda: _restart_later(top, top.apis[0], "API process 1"),
        ),
        Fault(
            0.30 * seconds,
            f"cut counter {cut.name} off the backend and the LAN",
            lambda: (shop.cut(cut), top.mark(f"cut {cut.name} off")),
        ),
        Fault(
            0.36 * seconds,
            "SIGKILL a relay, start it again",
            lambda: _restart_later(top, top.relays[0], "relay 1"),
        ),
        Fault(0.42 * seconds, "redeem two vouchers at two counters during the cut", doubles),
        Fault(
            0.48 * seconds,
            "SIGKILL the persist worker, start it again",
            lambda: _restart_later(top, top.workers["persist"], "persist worker"),
        ),
        Fault(
            0.56 * seconds,
            "stop the RabbitMQ node leading shopcardd.persist, start it again",
            stop_persist_leader,
        ),
        Fault(
            0.66 * seconds,
            f"reconnect counter {cut.name}",
            lambda: (doubles_done.wait(120), shop.heal(cut), top.mark(f"{cut.name} back on")),
        ),
    ]
