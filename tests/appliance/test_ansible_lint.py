"""The fleet playbook and its role pass ansible-lint's strictest (production) profile."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import ANSIBLE, BIN

# ansible-lint loads Ansible and every rule (about 13 s): in make test, not in make check.
pytestmark = pytest.mark.slow


def test_ansible_lint_passes_with_the_production_profile() -> None:
    done = subprocess.run(
        [
            str(BIN / "ansible-lint"),
            "--offline",
            "--profile",
            "production",
            "--nocolor",
            "counters.yml",
            "roles",
        ],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
