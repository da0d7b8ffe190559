"""The feedback panel on gpiozero's mock pins: each verdict's LED and buzzer pattern."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from shopcardd_device.errors import SignalError
from shopcardd_device.feedback import FeedbackPanel
from shopcardd_voucher import Reason

ACCEPT, REJECT, BUZZER = 17, 27, 22


@pytest.fixture
def panel(mock_factory: MockFactory) -> Iterator[FeedbackPanel]:
    with FeedbackPanel(ACCEPT, REJECT, BUZZER, signal_seconds=0.01) as panel:
        for pin in (ACCEPT, REJECT, BUZZER):
            mock_factory.pin(pin).clear_states()
        yield panel


def states(factory: MockFactory, pin: int) -> list[bool]:
    return [bool(state.state) for state in factory.pin(pin).states]


def changes(values: list[bool]) -> list[bool]:
    """The pin's history without repeats: what an eye or ear can tell."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def show(panel: FeedbackPanel, reason: Reason) -> None:
    panel.show(reason)
    assert panel.wait_for_idle(5)


def test_accepted_is_green_with_one_short_beep(panel: FeedbackPanel, mock_factory: MockFactory) -> None:
    show(panel, Reason.ACCEPTED)
    assert changes(states(mock_factory, ACCEPT)) == [False, True, False]
    assert changes(states(mock_factory, REJECT)) == [False]
    assert changes(states(mock_factory, BUZZER)) == [False, True, False]


def test_already_used_is_three_red_flashes_and_three_beeps(
    panel: FeedbackPanel, mock_factory: MockFactory
) -> None:
    show(panel, Reason.ALREADY_REDEEMED)
    assert changes(states(mock_factory, ACCEPT)) == [False]
    assert changes(states(mock_factory, REJECT)) == [False] + [True, False] * 3
    assert changes(states(mock_factory, BUZZER)) == [False] + [True, False] * 3


@pytest.mark.parametrize("reason", [r for r in Reason if r not in (Reason.ACCEPTED, Reason.ALREADY_REDEEMED)])
def test_every_other_rejection_is_red_with_one_long_beep(
    panel: FeedbackPanel, mock_factory: MockFactory, reason: Reason
) -> None:
    show(panel, reason)
    assert changes(states(mock_factory, ACCEPT)) == [False]
    assert changes(states(mock_factory, REJECT)) == [False, True, False]
    assert changes(states(mock_factory, BUZZER)) == [False, True, False]
    assert panel.value == (0, 0, 0)


def test_degraded_is_steady_amber_between_verdicts(panel: FeedbackPanel, mock_factory: MockFactory) -> None:
    panel.set_degraded(True)
    assert panel.is_degraded and panel.value == (1, 1, 0)  # both LEDs: amber
    show(panel, Reason.CLOCK_UNTRUSTED)
    assert panel.value == (1, 1, 0)  # back to amber after the verdict
    assert changes(states(mock_factory, ACCEPT)) == [False, True, False, True]
    panel.set_degraded(False)
    assert panel.value == (0, 0, 0)


def test_patterns_play_in_order_without_being_cut_short(
    panel: FeedbackPanel, mock_factory: MockFactory
) -> None:
    panel.show(Reason.ACCEPTED)
    panel.show(Reason.EXPIRED)
    assert panel.wait_for_idle(5)
    assert changes(states(mock_factory, ACCEPT)) == [False, True, False]
    assert changes(states(mock_factory, REJECT)) == [False, True, False]
    assert changes(states(mock_factory, BUZZER)) == [False, True, False, True, False]


def test_panel_is_a_gpiozero_composite_of_named_devices(panel: FeedbackPanel) -> None:
    assert panel.namedtuple._fields == ("accept", "reject", "buzzer")
    panel.close()
    assert panel.closed


def test_a_pin_used_twice_is_named_without_the_off_the_pi_hint_when_a_factory_is_set(
    mock_factory: MockFactory,
) -> None:
    with pytest.raises(SignalError) as raised:
        FeedbackPanel(ACCEPT, f"GPIO{ACCEPT}", BUZZER)
    assert "GPIOZERO_PIN_FACTORY=mock" not in str(raised.value)  # a factory is set: the hint would mislead
    assert "GPIO17" in str(raised.value)


@pytest.mark.parametrize(
    ("role", "pins"), [("buzzer", (ACCEPT, REJECT, "nonsense")), ("reject", (ACCEPT, 99, BUZZER))]
)
def test_a_pin_the_factory_refuses_is_named_by_its_gpio_setting(
    mock_factory: MockFactory, role: str, pins: tuple[int | str, ...]
) -> None:
    with pytest.raises(SignalError, match=rf"^\[gpio\] {role}: cannot drive pin"):
        FeedbackPanel(*pins)
    with FeedbackPanel(ACCEPT, REJECT, BUZZER):  # the pins it did take were given back
        pass
