"""``shopcardd-device sync``: one sync with the backend, then exit (a systemd timer runs it).

The wire contract is docs/backend-api.md, "Devices". Each request carries a new device token
signed with the device key (``shopcardd_voucher.device_auth``). Redemptions go up in batches
after the ledger's upload watermark; each answer (the backend's verdict per redemption, the
key set, revocations, peers, the server's time) is written to the ledger in one transaction
(``Ledger.apply_sync``) before the next batch is sent. So a sync cut off anywhere resumes, on
the next try or the next run, where the last confirmed batch ended; a batch whose answer was
lost is sent again, which the backend makes harmless (it keeps the first upload).

A failure that may pass (no connection, a timeout, 408/429/5xx) is retried with a growing
pause (``Retry-After`` when the backend gives one); a refusal (401, 403, 422, an answer that
is no sync answer) is final and ends the run at once, except 413: a body too large for the
backend, or for a proxy before it with a lower limit, goes again in halves, down to one
redemption. A refusal that every later run would meet too (a 4xx other than 401) stays in the
ledger until a sync succeeds, so ``status`` shows it. Either way what was confirmed stays,
and nothing a failed sync does changes a verdict the counter has given: the backend's
verdict is kept beside the counter's.

The scan loop never waits on this: it is another process, and it holds the ledger's write
lock only for the short transaction that applies one answer.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import requests

from shopcardd_commands.answers import problem_detail, transport_reason
from shopcardd_commands.commandline import counted
from shopcardd_voucher import (
    InvalidKeyError,
    KeySet,
    SigningKey,
    VerificationKey,
    readable_time,
    rfc3339_time,
)
from shopcardd_voucher.device_auth import make_device_token
from shopcardd_voucher.trust import ANSWER_TYPE, TrustError, follow_chain, read_document

from .closing import Closing
from .config import DeviceConfig
from .errors import DeviceError
from .ledger import BackendVerdict, Ledger, Redemption, SyncRecord, TrustPin
from .log import event, get_logger
from .sync_keys import load_device_key, load_trust_key

SYNC_PATH: Final = "/v1/devices/sync"
MAX_BATCH: Final = 500
"""The most redemptions the backend takes in one request."""
TRIES: Final = 6
"""Tries of one request before the run gives up (5 pauses: 1, 2, 4, 8, 16 s, each up to 25 % more)."""
FIRST_PAUSE_SECONDS: Final = 1.0
MAX_PAUSE_SECONDS: Final = 60.0
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
CLOCK_SKEW_SECONDS: Final = 30.0
"""A backend ``Date`` further than this from the device's clock: sign tokens by the backend's time."""

log = get_logger("sync")
Clock = Callable[[], float]
Sleep = Callable[[float], object]
Retried = Callable[[int, int, str, float], object]
"""Told of each try that failed and will be tried again: (try, tries, why, pause in seconds)."""


class SyncFailed(DeviceError, RuntimeError):
    """The backend could not be reached or refused the sync (exit 1); the message says why.

    ``status`` is the HTTP status of a refusal (``None`` when there was no answer to refuse with).
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status

    @property
    def is_refusal(self) -> bool:
        """Refused for what was sent, so every later run is refused alike until someone acts: a 4xx.
        A 401 is not one: a revoked device is the merchant's own act, and a clock far off heals at
        the next run that reads the backend's ``Date``."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 401


class AnswerNotTrusted(SyncFailed):
    """A sync answer that the pinned trust key does not vouch for, or that is not the answer to
    this request (another nonce: an old answer replayed): nothing of it is applied, and like a
    refusal it is kept for ``status`` until a sync succeeds."""

    @property
    def is_refusal(self) -> bool:
        return True


class _WatermarkRefused(SyncFailed):
    """The backend did not give the revocation watermark sent (restored from a backup, another
    backend): start over from ``null``, as the contract says."""


class _Transient(Exception):
    """A failure worth another try; ``retry_after`` is the backend's word on when, if it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class SyncReport:
    """What one run did, for the command's summary line and the log."""

    uploaded: int = 0
    conflicts: int = 0
    revoked: int = 0
    requests: int = 0
    retries: int = 0
    let_go: int = 0
    batch_size: int = 0
    """The batch size the run ended with: less than ``[sync] batch_size`` after a 413 halved it."""
    kids: list[str] = field(default_factory=list)
    keys_valid_until: float | None = None
    peers: int = 0
    server_time: float | None = None


class BackendClient(Closing):
    """``POST /v1/devices/sync`` over one keep-alive session, a new device token per request.

    Tokens are dated by the device's clock, unless the backend's ``Date`` header says that clock
    is off (a Pi booted days behind): then by the backend's time, so a sync can still happen
    and set the time floor right. The ``Date`` header only dates tokens; it never moves the floor.
    """

    def __init__(
        self,
        url: str,
        key: SigningKey,
        trust: VerificationKey,
        *,
        timeout: float,
        clock: Clock = time.time,
        session: requests.Session | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key, self.trust, self.timeout, self.clock = key, trust, timeout, clock
        self.pinned = trust
        """The key the chain starts from; ``trust`` is where it led (the signer of the last answer)."""
        self.session = session or requests.Session()
        if ca_file is not None:
            self.session.verify = ca_file
        self.offset = 0.0
        """Seconds to add to the device's clock to get the backend's (0 while they agree)."""

    def close(self) -> None:
        self.session.close()

    def sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """One sync request; what its answer's signed document says (``self.trust`` follows the
        chain it carried). ``_Transient`` for what may pass, ``SyncFailed`` else."""
        nonce = secrets.token_urlsafe(16)
        answer = self._post({**body, "nonce": nonce})
        try:
            signer = follow_chain(self.trust, answer.get("trust_chain") or [])
            told = read_document(answer.get("signed"), signer, ANSWER_TYPE)
        except TrustError as exc:
            raise AnswerNotTrusted(f"the sync answer is not the backend's: {exc}") from None
        if told.get("nonce") != nonce or told.get("device_id") != self.key.kid:
            raise AnswerNotTrusted(
                "the sync answer is not the answer to this request (another nonce or device): "
                "an old answer replayed?"
            )
        self.trust = signer
        return told

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        token = make_device_token(self.key, self.url, now=self.clock() + self.offset)
        try:
            response = self.session.post(
                self.url + SYNC_PATH,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout,
                # Given per request: requests lets REQUESTS_CA_BUNDLE (set system-wide on many
                # machines) override the session's own CA file, and ca_file would be ignored.
                verify=self.session.verify,
            )
        except requests.RequestException as exc:
            raise _Transient(f"cannot reach the backend at {self.url} ({transport_reason(exc)})") from None
        clock_was_off = self._learn_offset(response)
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError:
                raise SyncFailed(
                    f"{self.url}{SYNC_PATH} answered 200 without JSON: is it a ShopCardd backend?"
                ) from None
            if not isinstance(answer, dict):
                raise SyncFailed(f"{self.url}{SYNC_PATH} did not answer with a sync answer")
            return answer
        detail = problem_detail(response)
        if response.status_code == 401 and clock_was_off:
            raise _Transient(f"the device's clock is off; dating the token by the backend's ({detail})", 0.0)
        if response.status_code == 422 and "revocations_after" in detail:
            raise _WatermarkRefused(detail)
        if response.status_code in TRANSIENT_STATUSES:
            raise _Transient(
                f"the backend answered HTTP {response.status_code}: {detail}", _retry_after(response)
            )
        raise SyncFailed(
            f"the backend refused the sync (HTTP {response.status_code}): {detail}", response.status_code
        )

    def _learn_offset(self, response: requests.Response) -> bool:
        """Note how far the backend's ``Date`` is from the device's clock; whether that changed the
        dating of tokens (then a refused token is worth one more try)."""
        try:
            date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return False
        offset = date - self.clock()
        offset = offset if abs(offset) > CLOCK_SKEW_SECONDS else 0.0
        changed = abs(offset - self.offset) > CLOCK_SKEW_SECONDS
        self.offset = offset
        return changed


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _moment(text: Any) -> float:
    if not isinstance(text, str):
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    return datetime.fromisoformat(text).timestamp()


IDENTIFIER: Final = re.compile(r"[\x21-\x7e]{1,64}")
"""An id as the backend takes it: 1 to 64 printable ASCII characters."""


def _upload(redemption: Redemption) -> dict[str, Any]:
    upload: dict[str, Any] = {
        "voucher_id": redemption.voucher_id,
        "deal_id": redemption.deal,
        "redeemed_at": rfc3339_time(redemption.redeemed_at),
        "expires_at": rfc3339_time(redemption.expires_at),
    }
    if IDENTIFIER.fullmatch(redemption.user):
        upload["user_id"] = redemption.user
    return upload


def read_answer(
    answer: dict[str, Any], batch: list[Redemption], uploaded_through: int, trust: TrustPin | None = None
) -> SyncRecord:
    """The ledger's record of what one signed answer said; ``SyncFailed`` for an answer that does
    not fit the batch. ``trust``: the key that signed it, for the ledger to pin."""
    try:
        results = answer["results"]
        if [r["voucher_id"] for r in results] != [r.voucher_id for r in batch]:
            raise ValueError("its results are not one per redemption sent, in order")
        verdicts = [
            BackendVerdict(
                r["voucher_id"],
                r["status"],
                r.get("first_device_id"),
                _moment(r["first_redeemed_at"]) if r.get("first_redeemed_at") else None,
            )
            for r in results
        ]
        if any(v.status not in ("ok", "conflict", "refused") for v in verdicts):
            raise ValueError("a result's status is not ok, conflict or refused")
        keys = KeySet.from_jwks({"keys": answer["keys"]["keys"]})
        if not len(keys):
            raise ValueError("its key set is empty")
        revocations = answer["revocations"]
        return SyncRecord(
            uploaded_through=uploaded_through,
            verdicts=verdicts,
            keys=keys,
            keys_issued_at=_moment(answer["keys"]["issued_at"]),
            keys_valid_until=_moment(answer["keys"]["valid_until"]),
            revoked_vouchers=[str(v) for v in revocations["vouchers"]],
            revoked_deals=[str(d) for d in revocations["deals"]],
            revocations_watermark=revocations["watermark"],
            peers={str(p["device_id"]): dict(p["public_key"]) for p in answer["peers"]},
            server_time=_moment(answer["server_time"]),
            trust=trust,
        )
    except (KeyError, TypeError, ValueError, InvalidKeyError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        raise SyncFailed(f"the backend's answer is not a sync answer ({detail})") from None


class Syncer:
    """One run of ``sync``: batches up until everything recorded before it began is confirmed."""

    def __init__(
        self,
        ledger: Ledger,
        client: BackendClient,
        *,
        batch_size: int,
        leeway: float,
        sleep: Sleep = time.sleep,
        tries: int = TRIES,
        on_retry: Retried | None = None,
    ) -> None:
        self.ledger, self.client, self.sleep, self.tries = ledger, client, sleep, tries
        self.on_retry = on_retry
        self.batch_size = min(batch_size, MAX_BATCH)
        self.leeway = leeway
        self.report = SyncReport(batch_size=self.batch_size)

    def run(self) -> SyncReport:
        """The whole run; a refusal is kept in the ledger (for ``status``) until a run succeeds."""
        try:
            self._run()
        except SyncFailed as exc:
            if exc.is_refusal:
                failure = self.ledger.note_sync_failure(str(exc), self.client.clock() + self.client.offset)
                event(
                    log,
                    "sync_failing",
                    logging.ERROR,
                    error=str(exc),
                    status=exc.status,
                    since=rfc3339_time(failure.since),
                )
            raise
        if self.ledger.sync_failure is not None:
            self.ledger.clear_sync_failure()
        return self.report

    def _run(self) -> None:
        through = self.ledger.last_seq  # redemptions recorded during the run wait for the next one
        more_revocations = True
        while more_revocations or self.ledger.upload_watermark < through:
            batch = self.ledger.to_upload(limit=self.batch_size, through=through)
            # A short batch holds every row up to ``through``: gaps in seq need no later request.
            confirmed = through if len(batch) < self.batch_size else batch[-1].seq
            try:
                answer = self._request(batch)
            except SyncFailed as exc:
                if exc.status != 413:
                    raise
                self._halve(batch, exc)
                continue
            record = read_answer(answer, batch, confirmed, TrustPin(self.client.pinned, self.client.trust))
            self.report.let_go += self.ledger.apply_sync(record, self.leeway)
            more_revocations = bool(answer["revocations"].get("more"))
            self._note(record)

    def _halve(self, batch: list[Redemption], refused: SyncFailed) -> None:
        """A body too large for the backend (or a proxy before it, with a lower limit): the same
        rows go again in batches half the size; a single redemption refused is a failure."""
        if len(batch) <= 1:
            what = "even a single redemption" if batch else "even a sync with no redemption"
            raise SyncFailed(f"{refused} ({what} is more than it takes)", refused.status) from None
        self.batch_size = self.report.batch_size = len(batch) // 2
        event(
            log,
            "sync_batch_halved",
            logging.WARNING,
            error=str(refused),
            redemptions=len(batch),
            batch_size=self.batch_size,
        )

    def _request(self, batch: list[Redemption]) -> dict[str, Any]:
        """Send one batch; a revocation watermark the backend refuses is dropped (all revocations
        come again, which changes nothing already stored)."""
        body = {
            "redemptions": [_upload(r) for r in batch],
            "revocations_after": self.ledger.revocations_watermark,
        }
        try:
            return self._send(body)
        except _WatermarkRefused as exc:
            event(log, "sync_watermark_refused", logging.WARNING, error=str(exc))
            return self._send({**body, "revocations_after": None})

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one request, trying again after a growing pause while the failure may pass."""
        pause = FIRST_PAUSE_SECONDS
        for attempt in range(1, self.tries + 1):
            self.report.requests += 1
            try:
                return self.client.sync(body)
            except _Transient as exc:
                if attempt == self.tries:
                    tries = f"{self.tries} tries" if self.tries > 1 else "1 try"
                    raise SyncFailed(f"{exc} (gave up after {tries})") from None
                wait = exc.retry_after if exc.retry_after is not None else pause * random.uniform(1, 1.25)
                wait = min(wait, MAX_PAUSE_SECONDS)
                self.report.retries += 1
                event(
                    log, "sync_retry", logging.WARNING, error=str(exc), attempt=attempt, pause=round(wait, 2)
                )
                if self.on_retry is not None:
                    self.on_retry(attempt, self.tries, str(exc), wait)
                self.sleep(wait)
                pause = min(pause * 2, MAX_PAUSE_SECONDS)
        raise AssertionError("unreachable")  # pragma: no cover

    def _note(self, record: SyncRecord) -> None:
        conflicts = sum(v.status == "conflict" for v in record.verdicts)
        report = self.report
        report.uploaded += len(record.verdicts)
        report.conflicts += conflicts
        report.revoked += len(record.revoked_vouchers) + len(record.revoked_deals)
        report.kids = record.keys.kids
        report.keys_valid_until = record.keys_valid_until
        report.peers = len(record.peers)
        report.server_time = record.server_time
        event(
            log,
            "sync_batch",
            logging.WARNING if conflicts else logging.INFO,
            redemptions=len(record.verdicts),
            conflicts=conflicts,
            revocations=len(record.revoked_vouchers) + len(record.revoked_deals),
            uploaded_through=record.uploaded_through,
            server_time=rfc3339_time(record.server_time),
        )


def sync(
    config: DeviceConfig,
    ledger: Ledger,
    *,
    clock: Clock = time.time,
    sleep: Sleep = time.sleep,
    session: requests.Session | None = None,
    tries: int = TRIES,
    on_retry: Retried | None = None,
) -> SyncReport:
    """One sync of ``ledger`` with ``config``'s backend (``SyncFailed``: exit 1); each request is
    tried up to ``tries`` times while its failure may pass."""
    key = load_device_key(config)
    trust = load_trust_key(config, ledger)
    assert config.backend_url is not None  # load_device_key refused a config without it
    with BackendClient(
        config.backend_url,
        key,
        trust,
        timeout=config.sync.timeout_seconds,
        clock=clock,
        session=session,
        ca_file=None if config.ca_file is None else str(config.ca_file),
    ) as client:
        syncer = Syncer(
            ledger,
            client,
            batch_size=config.sync.batch_size,
            leeway=config.leeway_seconds,
            sleep=sleep,
            tries=tries,
            on_retry=on_retry,
        )
        return syncer.run()


def summary(report: SyncReport, config: DeviceConfig) -> str:
    """The one line a sync that succeeded prints; times in the shop's time zone (``timezone``)."""

    def readable(moment: float | None) -> str | None:
        return None if moment is None else readable_time(moment, config.timezone)

    conflicts = f" ({counted(report.conflicts, 'conflict')})" if report.conflicts else ""
    halved = (
        f" in batches halved to {report.batch_size} (larger ones were refused with HTTP 413)"
        if report.batch_size < min(config.sync.batch_size, MAX_BATCH)
        else ""
    )
    return (
        f"synced with {config.backend_url}: {counted(report.uploaded, 'redemption')} up{conflicts}{halved}, "
        f"{counted(report.revoked, 'revocation')} down, key set {' '.join(report.kids)} valid until "
        f"{readable(report.keys_valid_until)}, {counted(report.peers, 'peer')}, "
        f"server time {readable(report.server_time)}"
    )
