"""The pure rules: voucher + ledger facts + trusted time -> verdict (no ledger, no clock)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from shopcardd_device import policy
from shopcardd_device.policy import EARLIEST_BELIEVABLE_TIME, ClockState, trusted_time
from shopcardd_voucher import ALGORITHMS, KeySet, Reason, SigningKey, Verdict, issue, verify

from .conftest import MERCHANT, Keys, Mint

NOW = time.time()
DAY = 86_400.0


@dataclass
class Facts:
    revoked_vouchers: set[str] = field(default_factory=set)
    revoked_deals: set[str] = field(default_factory=set)
    redeemed: dict[str, float] = field(default_factory=dict)

    def is_revoked(self, voucher_id: str, deal: str) -> bool:
        return voucher_id in self.revoked_vouchers or deal in self.revoked_deals

    def redeemed_at(self, voucher_id: str) -> float | None:
        return self.redeemed.get(voucher_id)


def judge(
    keys: Keys, token: str, facts: Facts | None = None, clock: float = NOW, floor: float | None = None
) -> Verdict:
    keyset = KeySet([keys.signing.verification_key()])
    return policy.judge(
        token,
        keys=keyset,
        merchant=MERCHANT,
        facts=facts or Facts(),
        time=trusted_time(clock, floor),
        leeway=60,
    )


def voucher_id(keys: Keys, token: str) -> str:
    verdict = judge(keys, token)
    assert verdict.voucher is not None
    return verdict.voucher.voucher_id


def test_a_genuine_voucher_for_this_merchant_is_accepted(keys: Keys, mint: Mint) -> None:
    assert judge(keys, mint()).reason is Reason.ACCEPTED


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda keys, mint: mint(merchant="m-other"), Reason.WRONG_MERCHANT),
        (lambda keys, mint: mint(key=keys.forger), Reason.BAD_SIGNATURE),
        (lambda keys, mint: "not a voucher", Reason.BAD_FORMAT),
        (lambda keys, mint: mint(now=NOW - 2 * DAY), Reason.EXPIRED),
        (lambda keys, mint: mint(not_before=int(NOW + DAY)), Reason.NOT_YET_VALID),
    ],
)
def test_each_fault_has_its_reason(
    keys: Keys, mint: Mint, make: Callable[[Keys, Mint], str], reason: Reason
) -> None:
    assert judge(keys, make(keys, mint)).reason is reason


def test_revocation_of_the_voucher_or_its_whole_deal(keys: Keys, mint: Mint) -> None:
    token = mint(deal="d-bagel")
    assert judge(keys, token, Facts(revoked_vouchers={voucher_id(keys, token)})).reason is Reason.REVOKED
    assert judge(keys, token, Facts(revoked_deals={"d-bagel"})).reason is Reason.REVOKED
    assert judge(keys, mint(deal="d-other"), Facts(revoked_deals={"d-bagel"})).reason is Reason.ACCEPTED


def test_already_redeemed_is_told_apart_from_revoked_and_expired(keys: Keys, mint: Mint) -> None:
    token = mint()
    redeemed = Facts(redeemed={voucher_id(keys, token): NOW})
    assert judge(keys, token, redeemed).reason is Reason.ALREADY_REDEEMED
    # shown again days later: the cashier learns it was used, not merely that it is old
    assert judge(keys, token, redeemed, clock=NOW + 3 * DAY).reason is Reason.ALREADY_REDEEMED


def test_a_wrong_merchant_voucher_is_not_called_redeemed_or_revoked(keys: Keys, mint: Mint) -> None:
    token = mint(merchant="m-other")
    facts = Facts(redeemed={voucher_id(keys, token): NOW}, revoked_deals={"d-espresso"})
    assert judge(keys, token, facts).reason is Reason.WRONG_MERCHANT


def test_trusted_time_is_the_clock_unless_it_is_behind_the_floor() -> None:
    assert trusted_time(NOW, NOW - DAY) == policy.TrustedTime(NOW, ClockState.TRUSTED, NOW, NOW - DAY)
    behind = trusted_time(NOW - 5 * DAY, NOW)
    assert (behind.now, behind.state) == (NOW, ClockState.BEHIND_FLOOR)
    assert trusted_time(0.0, None).state is ClockState.UNTRUSTED
    assert trusted_time(0.0, NOW).now == NOW  # a 1970 clock with a floor: judged at the floor
    assert trusted_time(EARLIEST_BELIEVABLE_TIME + 1, None).state is ClockState.TRUSTED


def test_the_floor_rises_with_synchronised_clock_readings_and_genuine_iat_but_never_falls(
    keys: Keys, mint: Mint
) -> None:
    token = mint(now=NOW + 30)  # the backend's clock a little ahead of ours
    verdict = judge(keys, token)
    assert policy.floor_after(trusted_time(NOW, NOW - DAY, True), verdict) == int(NOW + 30)
    assert policy.floor_after(trusted_time(NOW - DAY, NOW, True), Verdict(Reason.BAD_FORMAT)) == NOW
    forged = judge(keys, mint(key=keys.forger, now=NOW + DAY))
    assert policy.floor_after(trusted_time(NOW, None, True), forged) == NOW  # a forged iat proves nothing


def test_an_unsynchronised_clock_is_no_evidence_of_the_time(keys: Keys, mint: Mint) -> None:
    """A clock restored days behind at boot, or set far ahead by hand, moves no floor."""
    bad = Verdict(Reason.BAD_FORMAT)
    assert policy.floor_after(trusted_time(NOW, None), bad) is None
    assert policy.floor_after(trusted_time(NOW + 30 * DAY, NOW), bad) == NOW
    assert policy.floor_after(trusted_time(NOW + 30 * DAY, NOW, True), bad) == NOW + 30 * DAY


def test_with_a_synchronised_clock_a_future_iat_raises_the_floor_at_most_by_the_leeway(
    keys: Keys, mint: Mint
) -> None:
    ahead = judge(keys, mint(merchant="m-other", now=NOW + 2 * DAY))
    assert ahead.reason is Reason.WRONG_MERCHANT  # genuine, but two days ahead
    assert policy.floor_after(trusted_time(NOW, NOW - DAY, True), ahead, 60) == NOW + 60
    assert policy.floor_after(trusted_time(NOW - 3 * DAY, NOW - DAY, True), ahead, 60) == NOW - DAY


def test_with_an_unsynchronised_clock_a_genuine_iat_counts_in_full(keys: Keys, mint: Mint) -> None:
    """After an offline boot the clock reads what fake-hwclock saved: a fresh voucher is the best
    evidence of the time there is (a floor it pushes ahead is set right by the next sync)."""
    fresh = judge(keys, mint(now=NOW + 3 * DAY))
    assert policy.floor_after(trusted_time(NOW, NOW - DAY), fresh, 60) == int(NOW + 3 * DAY)
    assert policy.floor_after(trusted_time(NOW - 3 * DAY, NOW - DAY), fresh, 60) == int(NOW + 3 * DAY)


def test_with_nothing_to_trust_a_genuine_voucher_is_clock_untrusted_and_raises_no_floor(
    keys: Keys, mint: Mint
) -> None:
    verdict = judge(keys, mint(), clock=1_000.0, floor=None)
    assert verdict.reason is Reason.CLOCK_UNTRUSTED
    assert policy.floor_after(trusted_time(1_000.0, None), verdict) is None
    # but what needs no clock is still final: a forgery is a forgery
    assert judge(keys, mint(key=keys.forger), clock=1_000.0).reason is Reason.BAD_SIGNATURE


def test_a_key_set_past_its_window_is_not_in_force(keys: Keys) -> None:
    old = keys.signing.verification_key(expires=int(NOW - DAY))
    assert not policy.keys_in_force([old], NOW)
    assert policy.keys_in_force([keys.signing.verification_key()], NOW)
    assert not policy.keys_in_force([keys.signing.verification_key()], None)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_reason_code_is_reached_with_every_algorithm(alg: str) -> None:
    """The closed list, end to end through the counter's rules, for each signing algorithm."""
    signer = SigningKey.generate("k1", alg)  # type: ignore[arg-type]
    stranger = SigningKey.generate("k2", alg)  # type: ignore[arg-type]
    forger = SigningKey.generate("k1", alg)  # type: ignore[arg-type]
    keyset = KeySet([signer.verification_key()])

    def mint(key: SigningKey = signer, *, merchant: str = MERCHANT, deal: str = "d1", **when: int) -> str:
        return issue(
            key,
            deal=deal,
            merchant=merchant,
            user="u1",
            ttl=int(DAY),
            now=when.get("now", NOW),
            not_before=when.get("not_before"),
        )

    revoked, redeemed = mint(), mint()
    facts = Facts(revoked_vouchers={_id(keyset, revoked)}, redeemed={_id(keyset, redeemed): NOW})
    cases = {
        Reason.ACCEPTED: (mint(), NOW, None),
        Reason.BAD_FORMAT: ("not a voucher", NOW, None),
        Reason.BAD_SIGNATURE: (mint(forger), NOW, None),
        Reason.UNKNOWN_KEY: (mint(stranger), NOW, None),
        Reason.EXPIRED: (mint(now=int(NOW - 2 * DAY)), NOW, None),
        Reason.NOT_YET_VALID: (mint(not_before=int(NOW + DAY / 2)), NOW, None),
        Reason.WRONG_MERCHANT: (mint(merchant="m-other"), NOW, None),
        Reason.REVOKED: (revoked, NOW, None),
        Reason.ALREADY_REDEEMED: (redeemed, NOW, None),
        Reason.CLOCK_UNTRUSTED: (mint(), EARLIEST_BELIEVABLE_TIME - 10 * DAY, None),
    }
    assert set(cases) == set(Reason), "every reason code has a case"
    for reason, (token, clock, floor) in cases.items():
        verdict = policy.judge(
            token, keys=keyset, merchant=MERCHANT, facts=facts, time=trusted_time(clock, floor), leeway=60
        )
        assert verdict.reason is reason, f"{alg}: expected {reason}, got {verdict.reason} ({verdict.detail})"


def _id(keyset: KeySet, token: str) -> str:
    voucher = verify(token, keyset).voucher
    assert voucher is not None
    return voucher.voucher_id
