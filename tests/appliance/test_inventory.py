"""The fleet's inventory as an operator lays it out: bundles beside it, checked before any contact.

These runs never reach a counter: the counters named are loopback ports nobody listens on, so a
run that tried to connect would report them unreachable instead of naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from servers import free_port

from .conftest import ANSIBLE, BIN, MERCHANT, make_bundle

ENV = {
    **os.environ,
    "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_HOST_KEY_CHECKING": "0",
    "PATH": f"{BIN}:{os.environ['PATH']}",
}


def lay_out_fleet(top: Path, *, with_bundles: list[str], counters: list[str]) -> Path:
    """``top/inventory`` (the example's layout, one merchant group) and ``top/bundles/<counter>``
    for each counter in ``with_bundles``, as the fleet guide tells an operator to lay them out."""
    inventory = top / "inventory"
    shutil.copytree(ANSIBLE / "inventory.example", inventory)
    shutil.rmtree(inventory / "host_vars")
    port = free_port()
    hosts = "\n".join(
        f"        {name}:\n          ansible_host: 127.0.0.1\n          ansible_port: {port}"
        for name in counters
    )
    (inventory / "hosts.yml").write_text(
        f"counters:\n  children:\n    merchant_corner_cafe:\n      hosts:\n{hosts}\n"
    )
    (inventory / "group_vars" / "merchant_corner_cafe.yml").write_text(
        f'shopcardd_merchant_id: "{MERCHANT}"\n'
    )
    wheel = top / "dist" / "shopcardd-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")
    (inventory / "group_vars" / "counters.yml").write_text(f'shopcardd_wheel: "{wheel}"\n')
    for name in with_bundles:
        made = make_bundle(top / "enrolment" / name, device_id=name)
        shutil.copytree(made.folder, top / "bundles" / name)
    return inventory


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=ANSIBLE, env=ENV, capture_output=True, text=True, timeout=300
    )


def test_bundles_beside_the_inventory_are_found_without_a_parse_warning(tmp_path: Path) -> None:
    inventory = lay_out_fleet(tmp_path, with_bundles=["cafe-till-1"], counters=["cafe-till-1"])
    listed = run("ansible-inventory", "-i", str(inventory), "--list")
    assert listed.returncode == 0, listed.stderr
    assert "cafe-till-1" in listed.stdout
    assert "[WARNING]" not in listed.stderr, listed.stderr


def test_a_missing_bundle_stops_the_run_before_any_counter_is_contacted(tmp_path: Path) -> None:
    inventory = lay_out_fleet(
        tmp_path, with_bundles=["cafe-till-1"], counters=["cafe-till-1", "cafe-till-2"]
    )
    done = run("ansible-playbook", "-i", str(inventory), "counters.yml")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    # The missing bundle is named, at the default place beside the inventory ...
    assert f"{inventory}/../bundles/cafe-till-2" in output, output
    # ... the counter whose bundle is there passed its check ...
    assert "cafe-till-1: need" not in output
    # ... and no counter was contacted: an unreachable counter hides nothing.
    assert "UNREACHABLE" not in output, output
    assert "Gathering Facts" not in output, output
