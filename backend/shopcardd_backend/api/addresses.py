"""Who is the client: the address a claim is counted under for the per-address rate limit.

The ASGI scope's ``client`` is the direct peer. Behind the nginx site (``systemd/nginx/``) that
peer is nginx, and the client is named by ``X-Forwarded-For``, which anybody can send: so the
header is read only when the peer is a trusted proxy (``SHOPCARDD_TRUSTED_PROXIES``), and then
from the right, each proxy having appended the address it saw: the first address that is not
a trusted proxy is the client (entries a client wrote itself sit to the left and are never
reached). ``serve`` gives uvicorn the same list, so its own rewrite of the scope agrees.

An IPv6 client is counted by its /64, the block one subscriber gets: counting by /128 would
give every subscriber 2^64 addresses to rotate through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=65_536)
def _parsed(host: str) -> tuple[Address | None, str]:
    """``host`` as an address (None when it is not one) and the name it is counted under."""
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        return None, host[:100]  # a peer that is no IP address (a Unix socket, a test client)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            return address, str(ipaddress.IPv6Network((address, 64), strict=False))
    return address, str(address)


class ClientAddresses:
    """The client address of a request, given the trusted proxies."""

    def __init__(self, trusted: Iterable[Network]) -> None:
        self.trusted = tuple(trusted)
        self._trusts = lru_cache(maxsize=4096)(self._compute_trust)

    def _compute_trust(self, host: str) -> bool:
        address = _parsed(host)[0]
        return address is not None and any(address in network for network in self.trusted)

    def __call__(self, scope: Scope) -> str | None:
        client = scope.get("client")
        if not client:
            return None
        host = client[0]
        if not self.trusted or not self._trusts(host):
            return _parsed(host)[1]
        forwarded = b",".join(value for name, value in scope["headers"] if name == b"x-forwarded-for")
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            hop = hop.strip()
            if _parsed(hop)[0] is None:  # a hop no proxy would write: trust stops at the last one
                break
            host = hop
            if not self._trusts(hop):
                break
        return _parsed(host)[1]
