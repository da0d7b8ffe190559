"""The role never shows a secret: ``ansible-playbook --diff`` (or ``-v``) would print a copied
file's content, and the device's private key is the counter's identity."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .conftest import ANSIBLE

SECRET = re.compile(r"private|secret|device_key|password|api_key", re.IGNORECASE)
"""What names a secret in a task's arguments or loop."""
WRITES_FILES = ("copy", "template")


def _tasks() -> list[dict[str, Any]]:
    return yaml.safe_load((ANSIBLE / "roles/shopcardd/tasks/main.yml").read_text())


def _module(task: dict[str, Any]) -> tuple[str, Any]:
    (name,) = [key for key in task if key.startswith("ansible.builtin.")]
    return name.removeprefix("ansible.builtin."), task[name]


def test_every_task_that_writes_a_secret_shows_no_diff_and_logs_nothing() -> None:
    secret_tasks = []
    for task in _tasks():
        module, args = _module(task)
        if module in WRITES_FILES and SECRET.search(yaml.safe_dump([args, task.get("loop")])):
            secret_tasks.append(task)
            assert task.get("diff") is False, f"{task['name']}: needs diff: false (--diff prints the file)"
            assert task.get("no_log") is True, f"{task['name']}: needs no_log: true"
    assert [task["name"] for task in secret_tasks] == ["Copy the device's private key"]
