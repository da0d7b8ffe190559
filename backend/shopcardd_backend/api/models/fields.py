"""The field types every model shares: times bounded and in UTC, ids as counters upload them, and
the strict configuration of request bodies.

Request models are strict: ``"stock": "5"`` or ``"stock": true`` is a 422, not a stock of 5
or 1 (pydantic's lax mode would coerce them). Times are RFC 3339 strings only (lax mode would
also take a number as a Unix time).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, ConfigDict, Field, PlainSerializer

EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
TIME_RANGE = "from 2000-01-01T00:00:00Z to 9999-12-31T23:59:59Z (in UTC)"


def _utc(value: datetime) -> datetime:
    """UTC, whole seconds: the claim gate decides on epoch seconds, and stores keep no more.

    Bounded to years 2000 to 9999 in UTC: an offset can carry a time written in year 9999 (or 1)
    past what a datetime holds, and every time must fit the gate's epoch seconds, a BSON date
    and the SQLite store's ISO text alike."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"must be {TIME_RANGE}") from None
    if not EARLIEST_TIME <= utc.replace(microsecond=0) <= LATEST_TIME:
        raise ValueError(f"must be {TIME_RANGE}")
    return utc.replace(microsecond=0)


def _rfc3339_text(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string, such as 2026-12-01T09:00:00Z")
    return value


# JSON carries date-times as strings, which strict mode refuses, so these fields are lax for
# the parsing only, after the check that the value is a string.
UtcDatetime = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_text), Field(strict=False), AfterValidator(_utc)
]
STRICT_REQUEST = ConfigDict(extra="forbid", strict=True)


def _instant_text(value: datetime) -> str:
    """RFC 3339 in UTC, with milliseconds only when there are any: ``2026-12-01T13:05:09Z``."""
    text = value.astimezone(UTC).isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


Instant = Annotated[datetime, PlainSerializer(_instant_text, return_type=str)]
"""A time in an answer about devices: RFC 3339, UTC, ``Z``."""
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
"""A voucher, deal or user id as a counter uploads it: 1 to 64 printable ASCII characters."""
