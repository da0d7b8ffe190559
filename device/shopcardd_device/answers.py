"""The lines a person or a program reads of each verdict: ``verify``'s answers (text or JSON) and
the scan loop's line per scan. The raw code is echoed as ``safe_code`` makes it, never as scanned.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from shopcardd_voucher import Verdict

from . import policy
from .inputs import safe_code

if TYPE_CHECKING:
    from .scanner import Scan

REPEAT_NOTE: Final = "(repeat, not recorded or signalled again)"


def answer_line(item: str, verdict: Verdict, *, as_json: bool) -> str:
    """The answer to one input; the input is echoed as the ledger stores a raw code (``safe_code``),
    and the detail says why in words (JSON: ``null`` when there is nothing to add)."""
    fields, item, reason = policy.describe(verdict.voucher), safe_code(item), verdict.reason
    if as_json:
        answer = {"input": item, "result": str(reason), **fields, "detail": safe_code(verdict.detail) or None}
        return json.dumps(answer, separators=(",", ":"))
    line = (
        f"{reason:<16} {shorten(item)}  voucher {fields['voucher_id'] or '-'}  deal {fields['deal'] or '-'}"
    )
    return line + why(verdict)


def shorten(item: str) -> str:
    """An input as the readable lines show it: at most 40 characters."""
    return item if len(item) <= 40 else item[:37] + "..."


def why(verdict: Verdict) -> str:
    """The end of a refusal's readable line: why, in words (``redeemed at counter till-2 ...``)."""
    accepted = verdict.reason.is_accepted
    return f"  ({safe_code(verdict.detail)})" if verdict.detail and not accepted else ""


def scan_line(scan: Scan) -> str | None:
    """The scan loop's line for one scan: one per verdict, and one more the first time a held code
    is read again; further frames of it give none, so a code left in view cannot flood the journal."""
    if scan.repeats > 1:
        return None
    from .feedback import describe_pattern  # gpiozero only where the loop runs

    verdict = scan.verdict
    fields = policy.describe(verdict.voucher)
    shown = REPEAT_NOTE if scan.repeated else f"-> {describe_pattern(verdict.reason)}"
    return (
        f"{verdict.reason:<16} voucher {fields['voucher_id'] or '-'}  deal {fields['deal'] or '-'}"
        f"  {shown}{why(verdict)}"
    )
