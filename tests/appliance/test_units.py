"""The systemd units as systemd itself reads them: `systemd-analyze verify` and `security`.

There is no running systemd on a CI machine, and none is needed: both commands load the unit
files offline with the drop-ins beside them (SYSTEMD_UNIT_PATH), exactly as a counter or a
backend host would. What they cannot check here are the executables, which live in the
installed virtual environments: test_fleet checks those inside the arm64 root it provisions.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from servers import BodyLimitProxy
from shopcardd_device.cli import EXIT_REJECTED, EXIT_USAGE
from shopcardd_provision.keys import keygen
from shopcardd_voucher import SigningKey

from .conftest import BIN, UNITS, systemd_analyze

# A template unit is verified through an instance, as it runs.
INSTANCES = {
    "shopcardd-backend-api@.service": "shopcardd-backend-api@8001.service",
    "shopcardd-backend-relay@.service": "shopcardd-backend-relay@1.service",
    "shopcardd-backend-worker@.service": "shopcardd-backend-worker@persist.service",
}
COUNTER_SERVICES = ["shopcardd-verifier.service", "shopcardd-sync.service"]
MAX_EXPOSURE = 2.5
NOT_INSTALLED_HERE = re.compile(
    r"^\S+: Command /opt/shopcardd(-backend)?/venv/bin/\S+ is not executable: No such file"
)


def unit_names() -> list[str]:
    return sorted(INSTANCES.get(p.name, p.name) for p in UNITS.glob("shopcardd-*") if p.is_file())


def unit_env() -> dict[str, str]:
    return {**os.environ, "SYSTEMD_UNIT_PATH": f"{UNITS}:"}  # the trailing colon keeps systemd's own


def test_the_repository_has_the_units_the_issue_names() -> None:
    assert unit_names() == sorted([*COUNTER_SERVICES, "shopcardd-sync.timer", *INSTANCES.values()])


@pytest.mark.parametrize("unit", unit_names())
def test_every_unit_passes_systemd_analyze_verify(unit: str) -> None:
    """Any complaint fails, warnings included (verify exits 0 on an unknown key), except that the
    command is not installed on this machine."""
    done = systemd_analyze("verify", "--man=no", unit, env=unit_env())
    complaints = [line for line in done.stderr.splitlines() if not NOT_INSTALLED_HERE.match(line)]
    assert complaints == [], done.stderr


def exposure(unit: str, env: dict[str, str]) -> float:
    done = systemd_analyze("security", "--offline=true", "--no-pager", unit, env=env)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def test_security_scores_of_every_service(capsys: pytest.CaptureFixture[str]) -> None:
    """The counter's services must rate 2.5 or lower (the issue's bar); so must the backend's."""
    scores = {unit: exposure(unit, unit_env()) for unit in unit_names() if unit.endswith(".service")}
    with capsys.disabled():
        print("\nsystemd-analyze security --offline=true (exposure, 0 best .. 10 worst):")
        for unit, score in scores.items():
            print(f"  {unit:<45} {score:.1f}")
    assert {unit: score for unit, score in scores.items() if score > MAX_EXPOSURE} == {}
    assert all(scores[unit] <= MAX_EXPOSURE for unit in COUNTER_SERVICES)


def service_section(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"]


def test_the_verifier_stops_on_a_configuration_error_and_the_journal_says_why(tmp_path: Path) -> None:
    """Its own command line, run with a broken device.toml, exits with a status the unit does not
    restart on, and writes the line that names the setting to stderr (the journal)."""
    service = service_section("shopcardd-verifier.service")
    assert str(EXIT_USAGE) in service["RestartPreventExitStatus"].split()
    config = tmp_path / "device.toml"
    config.write_text(
        'device_id = "c1"\nmerchant_id = "m1"\ndata_dir = "d"\nkeyset = "k.json"\n'
        '[camera]\nsource = "webcam"\n'
    )
    command = service["ExecStart"].replace("/opt/shopcardd/venv/bin/", f"{BIN}/")
    command = command.replace("/etc/shopcardd/device.toml", str(config))
    done = subprocess.run(command.split(), capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.startswith("shopcardd-device run: [camera] source: must be one of")


def test_a_sync_the_backend_refuses_is_a_failed_run_of_the_unit_and_the_journal_says_why(
    tmp_path: Path,
) -> None:
    """Its own command line, against a backend (here a proxy before it) that refuses every body
    with 413, exits 1, which the unit does not count as success, and says why on stderr (the
    journal): one line, and a ``sync_failing`` log line at level error."""
    service = service_section("shopcardd-sync.service")
    assert str(EXIT_REJECTED) not in service.get("SuccessExitStatus", "").split()
    keygen("EdDSA", "k1", tmp_path / "keys")
    device_key = keygen("EdDSA", "counter-1", tmp_path / "device-key").private_key_path
    trust_key = tmp_path / "trust-key.json"  # the pin enrolment writes; never used: nothing answers
    trust_key.write_text(json.dumps(SigningKey.generate("t1").verification_key().to_jwk()))
    with BodyLimitProxy("http://127.0.0.1:9", max_bytes=0) as refusing:  # passes nothing on
        config = tmp_path / "device.toml"
        config.write_text(
            f'device_id = "counter-1"\nmerchant_id = "m1"\ndata_dir = "{tmp_path / "data"}"\n'
            f'keyset = "{tmp_path / "keys" / "jwks.json"}"\nbackend_url = "{refusing.url}"\n'
            f'device_key = "{device_key}"\ntrust_key = "{trust_key}"\n'
        )
        command = service["ExecStart"].replace("/opt/shopcardd/venv/bin/", f"{BIN}/")
        command = command.replace("/etc/shopcardd/device.toml", str(config))
        done = subprocess.run(command.split(), capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_REJECTED
    assert done.stderr.splitlines()[-1] == (
        "shopcardd-device sync: the backend refused the sync (HTTP 413): Request Entity Too Large "
        "(even a sync with no redemption is more than it takes)"
    )
    assert '"message":"sync_failing","service":"shopcardd-device"' in done.stderr
    assert '"level":"error"' in done.stderr
