"""What ``shopcardd-device status`` shows: the counter's state read from its ledger, as one JSON
object (times in RFC 3339, UTC, as the backend's API gives them, so a program can read them
without guessing a unit) and as lines a person reads (times in the shop's time zone).

A read model only: it changes nothing, so it also works on a read-only ledger.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from shopcardd_commands.commandline import counted
from shopcardd_voucher import readable_time, rfc3339_time

from .config import DeviceConfig
from .counter import Counter
from .inputs import safe_code
from .ledger import SyncFailure
from .policy import ClockState

STATUS_CONFLICTS: Final = 100
"""The most conflicts ``status --json`` lists (the latest); ``conflict_count`` counts them all."""
STATUS_CONFLICT_LINES: Final = 10
"""The most conflicts ``status`` shows as text."""


def _time(moment: float | None) -> str | None:
    return None if moment is None else rfc3339_time(moment)


def status_report(counter: Counter) -> dict[str, Any]:
    """The counter's state as ``status --json`` prints it."""
    ledger, now = counter.ledger, counter.time()  # one reading: clock, floor and health agree
    health = counter.health(now)
    return {
        "device_id": counter.config.device_id,
        "merchant": counter.config.merchant_id,
        "accepted": ledger.accepted_count(),
        "rejected": ledger.rejected_counts(),
        "unsynced": ledger.unsynced_count(),
        "conflict_count": ledger.conflict_count(),
        "conflicts": [
            {
                "voucher_id": r.voucher_id,
                "deal": r.deal,
                "redeemed_at": _time(r.redeemed_at),
                "first_device_id": r.first_device_id,
                "first_redeemed_at": _time(r.first_redeemed_at),
            }
            for r in ledger.conflicts(STATUS_CONFLICTS)
        ],
        "keys": [
            {
                "kid": key.kid,
                "alg": key.alg,
                "not_before": _time(key.not_before),
                "expires": _time(key.expires),
                "valid_now": now.now is not None and key.is_valid_at(now.now),
            }
            for key in counter.keys
        ],
        "keyset": {
            "issued_at": _time(counter.keyset_issued_at),
            "valid_until": _time(counter.keyset_valid_until),
            "stale": health.keyset_stale,
        },
        "revocations": ledger.revocation_count(),
        "peers": sorted(ledger.peers()),
        "lan": _lan_report(counter),
        "time_floor": _time(now.floor),
        "last_sync": _time(ledger.last_sync),
        "sync_failing": _sync_failing(ledger.sync_failure),
        "clock": str(now.state),
        "clock_synchronised": now.synchronised,
        "trusted_time": _time(now.now),
        "degraded": health.is_degraded,
        "ledger": safe_code(str(counter.config.ledger_path)),
        "ledger_exists": counter.config.ledger_path.is_file(),
    }


def _sync_failing(failure: SyncFailure | None) -> dict[str, Any] | None:
    return None if failure is None else {"since": _time(failure.since), "reason": failure.reason}


def _lan_report(counter: Counter) -> dict[str, Any]:
    """The shop LAN as the ledger saw it: each counter heard or sent to, and whether still enrolled."""
    config, ledger = counter.config, counter.ledger
    enrolled = ledger.peers()
    peers = [
        {
            "device_id": peer.device_id,
            "address": peer.address,
            "last_heard": peer.last_heard,
            "received": peer.received,
            "sent": peer.sent,
            "enrolled": peer.device_id in enrolled,
        }
        for peer in ledger.lan_peers()
    ]
    last_heard = max((p["last_heard"] for p in peers if p["last_heard"] is not None), default=None)
    for peer in peers:
        peer["last_heard"] = _time(peer["last_heard"])
    return {
        "enabled": config.lan.enabled and config.device_key is not None,
        "port": config.lan.port,
        "peers_seen": sum(p["last_heard"] is not None for p in peers),
        "last_heard": _time(last_heard),
        "received": sum(p["received"] for p in peers),
        "sent": sum(p["sent"] for p in peers),
        "peers": peers,
    }


CLOCK_WORDS: Final = {
    (ClockState.TRUSTED, True): "set by the network (synchronised)",
    (ClockState.TRUSTED, False): "not set by the network; believed because it is not behind the last time "
    "proven by a sync or a voucher",
    (ClockState.BEHIND_FLOOR, True): "behind the last time proven by a sync or a voucher; using that time",
    (ClockState.BEHIND_FLOOR, False): "not set by the network and behind the last time proven by a sync or "
    "a voucher; using that time",
    (ClockState.UNTRUSTED, True): "not believable and no time proven yet: time-bound vouchers are refused",
    (ClockState.UNTRUSTED, False): "not set by the network and no time proven yet (no sync, no voucher): "
    "time-bound vouchers are refused",
}
"""What the clock's state means for the merchant, by (state, whether the system synchronised it)."""


def status_lines(report: dict[str, Any], config: DeviceConfig) -> list[str]:
    """``report`` as ``status`` prints it without ``--json``."""

    def readable(moment: str | None) -> str | None:
        """A time as a person reads it, in the shop's time zone (``timezone``)."""
        return (
            None
            if moment is None
            else readable_time(datetime.fromisoformat(moment).timestamp(), config.timezone)
        )

    rejected = ", ".join(f"{reason} {count}" for reason, count in report["rejected"].items()) or "none"
    keys = ", ".join(
        f"{k['kid']} ({k['alg']}{'' if k['valid_now'] else ', past its window'})" for k in report["keys"]
    )
    where = report["ledger"] if report["ledger_exists"] else f"none yet at {report['ledger']}"
    lines = [
        f"device {report['device_id']} at merchant {report['merchant']}  (ledger {where})",
        f"  accepted   {report['accepted']}",
        f"  rejected   {rejected}",
        f"  unsynced   {report['unsynced']}",
        f"  conflicts  {report['conflict_count']}",
    ]
    lines += [
        f"    voucher {conflict['voucher_id']}  deal {conflict['deal']}: redeemed here "
        f"{readable(conflict['redeemed_at'])}, first at {conflict['first_device_id']} "
        f"{readable(conflict['first_redeemed_at']) or '(time unknown)'}"
        for conflict in report["conflicts"][:STATUS_CONFLICT_LINES]
    ]
    lines.append(f"  keys       {keys}")
    keyset = report["keyset"]
    if keyset["valid_until"] is None:
        lines.append("  key set    from the keyset file (not synced yet)")
    else:
        stale = "  STALE: sync the device" if keyset["stale"] else ""
        lines.append(f"  key set    synced, valid until {readable(keyset['valid_until'])}{stale}")
    lines.append(f"  revoked    {report['revocations']}  (vouchers and deals)")
    lines.append(f"  peers      {', '.join(report['peers']) or 'none'}")
    lan = report["lan"]
    state = f"on, port {lan['port']}" if lan["enabled"] else "off"
    lines.append(
        f"  shop LAN   {state}: {counted(lan['peers_seen'], 'peer')} seen, last heard "
        f"{readable(lan['last_heard']) or 'never'}; records received {lan['received']}, sent {lan['sent']}"
    )
    lines += [
        f"    {peer['device_id']} at {peer['address'] or '?'}: last heard "
        f"{readable(peer['last_heard']) or 'never'}, received {peer['received']}, "
        f"sent {peer['sent']}{'' if peer['enrolled'] else ' (no longer enrolled)'}"
        for peer in lan["peers"]
        if peer["last_heard"] is not None or peer["sent"]
    ]
    clock = CLOCK_WORDS[ClockState(report["clock"]), report["clock_synchronised"]]
    lines.append(f"  clock      {clock}")
    lines.append(f"  time floor {readable(report['time_floor']) or 'none'}  (the last time proven)")
    lines.append(f"  last sync  {readable(report['last_sync']) or 'never'}")
    if failing := report["sync_failing"]:
        since = datetime.fromisoformat(failing["since"]).isoformat(timespec="seconds")
        lines.append(f"  WARNING: sync failing since {since}: {failing['reason']}")
    if report["degraded"]:
        lines.append(
            "  WARNING: amber: the clock cannot be trusted, no key is in force, or the key set is stale; "
            "sync the device"
        )
    return lines
