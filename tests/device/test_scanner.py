"""The scan loop: frame -> decode -> debounce -> verify -> record -> signal, and it never stops."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory
from signatures import es256_twin

from shopcardd_bench.synthetic import Look, ScriptedSource, render
from shopcardd_device.config import DeviceConfig
from shopcardd_device.counter import Counter
from shopcardd_device.decoders import open_decoder
from shopcardd_device.errors import ConfigError, FrameError
from shopcardd_device.feedback import FeedbackPanel
from shopcardd_device.frames import open_source
from shopcardd_device.frames.base import Frame, FrameSource
from shopcardd_device.frames.files import FileSource
from shopcardd_device.frames.keyboard import KeyboardSource
from shopcardd_device.scanner import Scan, Scanner
from shopcardd_provision.keys import keygen
from shopcardd_provision.qr import save_qr
from shopcardd_voucher import Reason, SigningKey, issue

from .conftest import MERCHANT, Mint


class Ticks:
    """A monotonic clock the test moves by hand (debounce is judged on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CommittedFirst:
    """A signal that checks, from a separate connection, that an accepted scan is already committed."""

    def __init__(self, ledger_path: Path) -> None:
        self.db = sqlite3.connect(ledger_path)
        self.shown: list[Reason] = []
        self.committed_when_shown: list[int] = []

    def show(self, reason: Reason) -> None:
        self.shown.append(reason)
        self.committed_when_shown.append(self.db.execute("SELECT count(*) FROM redemptions").fetchone()[0])

    def show_fault(self) -> None:
        self.shown.append("fault")  # type: ignore[arg-type]

    def set_degraded(self, degraded: bool) -> None:
        pass


class FlakySource:
    """A camera that sometimes fails: every third read raises, as a USB camera unplugged might."""

    name = "flaky"

    def __init__(self, frames: list[Frame]) -> None:
        self.frames, self.reads = list(frames), 0

    def read(self) -> Frame | None:
        self.reads += 1
        if self.reads % 3 == 0:
            raise FrameError("camera hiccup") if self.reads % 2 else RuntimeError("driver bug")
        return self.frames.pop(0) if self.frames else None

    def close(self) -> None:
        pass


def test_accepted_is_signalled_only_after_the_ledger_commit(config: DeviceConfig, mint: Mint) -> None:
    tokens = [mint(), mint()]
    with Counter.open(config) as counter:
        signal = CommittedFirst(config.ledger_path)
        frames = [render(tokens[0]), render(tokens[1], Look(blur=1, noise=5))]
        Scanner(ScriptedSource(frames), open_decoder(), counter, signal).run()
    assert signal.shown == [Reason.ACCEPTED, Reason.ACCEPTED]
    assert signal.committed_when_shown == [1, 2]


def test_a_code_held_in_view_is_one_scan_and_a_later_showing_is_already_used(
    config: DeviceConfig, mint: Mint
) -> None:
    token = mint()
    ticks, seen = Ticks(), []
    with Counter.open(config) as counter:
        signal = CommittedFirst(config.ledger_path)
        scanner = Scanner(
            ScriptedSource([]),
            open_decoder(),
            counter,
            signal,
            debounce_seconds=3,
            monotonic=ticks,
            on_scan=seen.append,
        )
        frame = Frame(image=render(token))
        results = []
        for _ in range(10):  # held in front of the camera for 10 frames, 0.5 s apart
            results += scanner.process(frame)
            ticks.now += 0.5
        assert [s.verdict.reason for s in results] == [Reason.ACCEPTED] * 10
        assert [s.repeated for s in results] == [False] + [True] * 9
        ticks.now += 10  # taken away, shown again later
        [again] = scanner.process(frame)
        assert again.verdict.reason is Reason.ALREADY_REDEEMED and not again.repeated
        assert signal.shown == [Reason.ACCEPTED, Reason.ALREADY_REDEEMED]
        assert counter.ledger.accepted_count() == 1
        assert counter.ledger.rejected_counts() == {"already_redeemed": 1}
    # every sighting is reported, the repeats numbered, so the console can say it saw the code again
    assert [s.repeats for s in seen] == [0, *range(1, 10), 0]


def test_the_other_es256_spelling_of_a_redeemed_voucher_is_already_redeemed(tmp_path: Path) -> None:
    """Anyone holding an ES256 voucher can write its second valid signature, (r, n - s), without
    a key. Both spellings verify (another issuer's library may make either), and the ledger
    knows a voucher by its id: whichever spelling comes second is ``already_redeemed``."""
    made = keygen("ES256", "k-es", tmp_path / "keys")
    key = SigningKey.load("k-es", made.private_key_path)
    path = tmp_path / "device.toml"
    path.write_text(
        f'device_id = "counter-1"\nmerchant_id = "{MERCHANT}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'keyset = "{tmp_path / "keys" / "jwks.json"}"\n'
    )
    ours, theirs = (issue(key, deal="d-espresso", merchant=MERCHANT, user=f"u{n}", ttl=3600) for n in (1, 2))
    theirs = es256_twin(theirs)  # as a library that leaves s high would have signed it
    with Counter.open(DeviceConfig.load(path)) as counter:
        for first in (ours, theirs):
            accepted = counter.scan(first)
            assert accepted.reason is Reason.ACCEPTED and accepted.voucher is not None
            second = counter.scan(es256_twin(first))
            assert second.reason is Reason.ALREADY_REDEEMED
            assert second.voucher is not None and second.voucher.voucher_id == accepted.voucher.voucher_id
        assert counter.ledger.accepted_count() == 2
        assert counter.ledger.rejected_counts() == {"already_redeemed": 2}


def test_bad_frames_bad_codes_and_source_exceptions_never_stop_the_loop(
    config: DeviceConfig, mint: Mint
) -> None:
    good = [mint() for _ in range(3)]
    frames = [
        Frame(image=np.zeros((0, 0), np.uint8)),  # an empty image
        Frame(image=render("https://example.com/not-a-voucher")),
        Frame(image=render(good[0])),
        Frame(image=np.full((480, 640), 90, np.uint8)),  # nothing in view
        Frame(text="typed garbage"),
        Frame(image=render(good[1])),
        Frame(image=render(good[2], Look(inverted=True))),
    ]
    scans: list[Scan] = []
    with Counter.open(config) as counter:
        source = FlakySource(frames)
        scanner = Scanner(source, open_decoder(), counter, on_scan=scans.append, sleep=lambda s: None)
        scanner.run()
    assert [s.verdict.reason for s in scans] == [
        Reason.BAD_FORMAT,
        Reason.ACCEPTED,
        Reason.BAD_FORMAT,
        Reason.ACCEPTED,
        Reason.ACCEPTED,
    ]
    assert scanner.failures >= 3 and scanner.frames == len(frames)


def test_the_loop_drives_the_panel(config: DeviceConfig, mint: Mint, mock_factory: MockFactory) -> None:
    token = mint()
    ticks = Ticks()
    with Counter.open(config) as counter, FeedbackPanel(17, 27, 22, signal_seconds=0.01) as panel:
        scanner = Scanner(ScriptedSource([]), open_decoder(), counter, panel, monotonic=ticks)
        scanner.process(Frame(image=render(token)))
        assert panel.wait_for_idle(5)
        assert [bool(s.state) for s in mock_factory.pin(17).states][-2:] == [True, False]  # green shown
        mock_factory.pin(27).clear_states()
        ticks.now += 60
        scanner.process(Frame(image=render(token)))
        assert panel.wait_for_idle(5)
        assert sum(bool(s.state) for s in mock_factory.pin(27).states) == 3  # three red flashes


def test_the_panel_shows_amber_while_the_clock_cannot_be_trusted(
    config: DeviceConfig, mint: Mint, mock_factory: MockFactory
) -> None:
    with (
        Counter.open(config, clock=lambda: 0.0) as counter,
        FeedbackPanel(17, 27, 22, signal_seconds=0.01) as panel,
    ):
        Scanner(ScriptedSource([Frame(text=mint())]), None, counter, panel).run()
        assert panel.wait_for_idle(5)
        assert panel.value == (1, 1, 0)
        assert counter.ledger.rejected_counts() == {"clock_untrusted": 1}


def test_image_files_are_frames_in_name_order_and_a_broken_file_is_skipped(
    tmp_path: Path, mint: Mint
) -> None:
    tokens = [mint(), mint()]
    save_qr(tokens[1], tmp_path / "b.png")
    save_qr(tokens[0], tmp_path / "a.png")
    (tmp_path / "c.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    decoder = open_decoder()
    with FileSource([tmp_path]) as source:
        first, second = source.read(), source.read()
        with pytest.raises(FrameError):
            source.read()
        assert source.read() is None
    assert [decoder.decode(f.image) for f in (first, second) if f and f.image is not None] == [
        [tokens[0]],
        [tokens[1]],
    ]
    with pytest.raises(ConfigError, match=r"\[camera\] path"):
        FileSource([tmp_path / "missing"])


def test_a_usb_scanner_types_one_code_per_line() -> None:
    source = KeyboardSource(stream=io.StringIO("code-1\n\n  code-2  \n"))
    assert [source.read(), source.read(), source.read()] == [
        Frame(text="code-1", origin="-"),
        Frame(text="code-2", origin="-"),
        None,
    ]


def test_sources_that_need_absent_hardware_say_so(
    config: DeviceConfig, capfd: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    with pytest.raises(ConfigError, match="picamera2"):
        open_source(replace(config.camera, source="picamera"))
    with pytest.raises(ConfigError, match="V4L2 camera /dev/video99"):
        open_source(replace(config.camera, source="v4l2", path=("/dev/video99",)))
    assert capfd.readouterr().err == ""  # the one line is ours: OpenCV adds no warning of its own


def test_the_pi_camera_asks_for_macro_autofocus_and_bright_screen_exposure(config: DeviceConfig) -> None:
    from dataclasses import replace
    from enum import Enum
    from types import SimpleNamespace

    from shopcardd_device.frames.picamera import camera_controls

    enums = SimpleNamespace(
        AfModeEnum=Enum("AfModeEnum", "Manual Auto Continuous"),
        AfRangeEnum=Enum("AfRangeEnum", "Normal Macro Full"),
    )
    module3 = dict.fromkeys(
        ["AfMode", "AfRange", "ExposureValue", "ExposureTime", "AeEnable", "AnalogueGain"]
    )
    wanted = camera_controls(config.camera, module3, enums)
    assert wanted == {
        "AfMode": enums.AfModeEnum.Continuous,
        "AfRange": enums.AfRangeEnum.Macro,
        "ExposureValue": -0.5,
    }
    fixed = camera_controls(replace(config.camera, exposure_us=8000, analogue_gain=2.0), module3, enums)
    assert fixed["AeEnable"] is False and fixed["ExposureTime"] == 8000 and fixed["AnalogueGain"] == 2.0
    module2 = dict.fromkeys(["ExposureValue", "ExposureTime", "AeEnable", "AnalogueGain"])  # no autofocus
    assert "AfMode" not in camera_controls(config.camera, module2, enums)


def test_a_scan_the_ledger_cannot_record_shows_the_fault_and_is_not_accepted(
    config: DeviceConfig, mint: Mint, mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the ledger past the busy timeout: no green, a fault, nothing lost."""
    monkeypatch.setattr("shopcardd_device.ledger.base.BUSY_TIMEOUT_MS", 50)
    token = mint()
    with Counter.open(config) as counter, FeedbackPanel(17, 27, 22, signal_seconds=0.01) as panel:
        scanner = Scanner(ScriptedSource([]), None, counter, panel)
        holder = sqlite3.connect(config.ledger_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            assert scanner.process(Frame(text=token)) == []
            assert panel.wait_for_idle(5)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        lit = {pin: sum(bool(s.state) for s in mock_factory.pin(pin).states) for pin in (17, 27, 22)}
        assert lit == {17: 2, 27: 2, 22: 2}, "both lights flash twice with two beeps: not green, not red"
        assert counter.ledger.accepted_count() == 0
        (scan,) = scanner.process(Frame(text=token))  # the customer scans again
        assert scan.verdict.reason is Reason.ACCEPTED


def test_a_frame_source_is_a_context_manager_as_its_port_declares() -> None:
    assert {"__enter__", "__exit__"} <= set(vars(FrameSource))  # cli.py opens sources in a `with`
    with ScriptedSource(["a code"]) as source:
        frame = source.read()
        assert frame is not None and frame.text == "a code"


class FakePicamera2:
    """Stands in for picamera2 off the Pi: records the configuration asked for and gives YUV420
    buffers as libcamera does, rows padded to a stride wider than the frame."""

    made: list[FakePicamera2] = []
    camera_controls = dict.fromkeys(["AfMode", "AfRange", "ExposureValue"])

    def __init__(self) -> None:
        self.made.append(self)
        self.controls: dict[str, object] = {}
        self.closed = False

    def create_video_configuration(self, **streams: Any) -> dict[str, Any]:
        return streams

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def set_controls(self, controls: dict[str, object]) -> None:
        self.controls = controls

    def start(self) -> None:
        pass

    def capture_array(self, stream: str) -> np.ndarray:
        assert stream == "lores"
        width, height = self.config["lores"]["size"]
        yuv = np.full((height * 3 // 2, width + 64), 128, np.uint8)  # Y plane, then U and V
        yuv[:height, :width] = np.arange(width, dtype=np.uint8)  # the picture: columns 0..255
        return yuv

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_the_pi_camera_scans_the_y_plane_of_a_small_lores_stream(
    config: DeviceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    from types import SimpleNamespace

    from shopcardd_device.frames.picamera import PiCameraSource

    enums = SimpleNamespace(
        AfModeEnum=SimpleNamespace(Continuous="continuous"), AfRangeEnum=SimpleNamespace(Macro="macro")
    )
    monkeypatch.setitem(sys.modules, "picamera2", SimpleNamespace(Picamera2=FakePicamera2))
    monkeypatch.setitem(sys.modules, "libcamera", SimpleNamespace(controls=enums))
    with PiCameraSource(config.camera) as source:
        frame = source.read()
    [camera] = FakePicamera2.made
    assert camera.config["lores"] == {"size": (640, 480), "format": "YUV420"}
    assert camera.config["main"]["size"] == (640, 480)  # no full-size frames
    assert camera.controls == {"AfMode": "continuous", "AfRange": "macro", "ExposureValue": -0.5}
    assert frame is not None and frame.image is not None
    assert frame.image.shape == (480, 640) and frame.image.flags.c_contiguous  # Y only, padding cut
    assert (frame.image[0] == np.arange(640, dtype=np.uint8)).all()
    assert camera.closed
