"""SIGTERM stops a rehearsal as Ctrl-C does: what it started is unwound, and the exit code says
which signal it was (a CI job's timeout sends SIGTERM, and must not leave a broker behind)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from shopcardd_bench import rehearsal


def _rehearsal_stopped_by(
    sig: signal.Signals, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[int, bool]:
    """Run ``rehearsal.run`` on a stand-up that only registers its clean-up, then waits for a
    signal to this process: (exit code, whether the clean-up ran)."""
    unwound = threading.Event()

    def stand_up_and_wait(args: argparse.Namespace, folder: Path) -> int:
        with ExitStack() as stack:
            stack.callback(unwound.set)
            os.kill(os.getpid(), sig)
            threading.Event().wait(10)  # the signal's handler raises here
        return 0

    monkeypatch.setattr(rehearsal, "_rehearse", stand_up_and_wait)
    code = rehearsal.run(argparse.Namespace(report=tmp_path))
    return code, unwound.is_set()


def test_sigterm_unwinds_what_was_started_with_exit_143(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert _rehearsal_stopped_by(signal.SIGTERM, monkeypatch, tmp_path) == (143, True)
    assert "everything the rehearsal started is stopped" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler is back


def test_ctrl_c_still_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # even where it was ignored
    try:
        assert _rehearsal_stopped_by(signal.SIGINT, monkeypatch, tmp_path) == (130, True)
    finally:
        signal.signal(signal.SIGINT, before)
