"""The fleet playbook applied to a real Debian bookworm root for arm64, the Pi's architecture.

debootstrap builds the root once (qemu-user-static runs its arm64 binaries through binfmt_misc),
a minimal Debian with what every Raspberry Pi OS Lite image has (systemd, its time sync, the CA
certificates), and keeps it under /var/cache/shopcardd-tests/, keyed by what built it; each run
copies it, so every run provisions a fresh machine. The playbook reaches the root with ansible/'s chroot
connection, the one an operator uses to prepare an SD card: real apt, real pip (aarch64 wheels
from PyPI), real files and users. It runs twice (the second run must change nothing), then
`shopcardd-device verify` runs inside the root, as the counter's user, on a voucher.
Off a Raspberry Pi the Pi-only steps (the camera stack, GPIO) are skipped, and the test says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import service_missing

from .conftest import ANSIBLE, BIN, MERCHANT, REPO, Bundle, make_bundle, require_tool, systemd_analyze

CACHE = Path(os.environ.get("SHOPCARDD_TEST_CACHE", "/var/cache/shopcardd-tests"))
DEBOOTSTRAP = {
    "suite": "bookworm",
    "arch": "arm64",
    "variant": "minbase",
    # What Ansible needs to reach the root at all, and what every Raspberry Pi OS Lite image has:
    # the root stands in for one, and the playbook installs the rest (libzbar0, python3-venv, ...).
    "include": ["python3", "python3-apt", "systemd", "systemd-timesyncd", "ca-certificates"],
    "mirror": "http://deb.debian.org/debian",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
PI_ONLY_TASK = "Install the camera stack and GPIO library (Raspberry Pi only)"
BACKEND_ONLY = ["fastapi", "redis", "pymongo", "pika", "uvicorn"]
COUNTER_UNITS = ["shopcardd-verifier.service", "shopcardd-sync.service", "shopcardd-sync.timer"]

# The first run bootstraps the root (minutes under qemu); each run applies the playbook twice.
# One worker under xdist: every worker would otherwise provision a root of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400), pytest.mark.xdist_group("fleet")]


def debootstrap_version() -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def ahead_of_the_suite() -> None:
    """``preexec_fn`` of the emulated work: a higher priority (nice -5; the fixture runs as root).
    The fixture is make test's longest path, one process at a time under qemu: at an equal share
    of two cores beside the other tests it took 590 to 630 s, 345 s alone."""
    os.nice(-5)


def cached_root() -> tuple[Path, str]:
    """The bootstrapped root, built when no run has built it with the same inputs yet."""
    key = hashlib.sha256(json.dumps({**DEBOOTSTRAP, "debootstrap": debootstrap_version()}).encode())
    cached = CACHE / "roots" / f"{DEBOOTSTRAP['suite']}-{DEBOOTSTRAP['arch']}-{key.hexdigest()[:16]}"
    (CACHE / "roots").mkdir(parents=True, exist_ok=True)
    with open(CACHE / "roots" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once: one builds, the other waits
        if (cached / ".complete").exists():
            return cached, "cached"
        partial = cached.with_name(cached.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        argv = [require_tool("debootstrap", "debootstrap"), f"--arch={DEBOOTSTRAP['arch']}"]
        argv += [f"--variant={DEBOOTSTRAP['variant']}", f"--include={','.join(DEBOOTSTRAP['include'])}"]
        argv += [str(DEBOOTSTRAP["suite"]), str(partial), str(DEBOOTSTRAP["mirror"])]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=1800, preexec_fn=ahead_of_the_suite
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (partial / ".complete").write_text(" ".join(argv) + "\n")
        partial.rename(cached)
        return cached, f"built in {time.monotonic() - started:.0f} s"


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc, and the host's package caches over the root's, so a second run downloads nothing."""
    mounts: list[Path] = []
    try:
        for source, target in [
            (None, root / "proc"),
            (CACHE / "apt-archives", root / "var/cache/apt/archives"),
            (CACHE / "pip", root / "root/.cache/pip"),
        ]:
            target.mkdir(parents=True, exist_ok=True)
            if source is None:
                subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
            else:
                (source / "partial").mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
            mounts.append(target)
        yield
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(target)], check=False)


def build_wheel(out: Path) -> Path:
    """The shopcardd wheel of this working tree (from a clean copy: no stale build/ folder)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    )
    source = out / "source"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=600,
    )
    return next(out.glob("shopcardd-*.whl"))


@dataclass
class Run:
    """One ansible-playbook run: each task's outcome (changed wins over ok), the recap, the time."""

    returncode: int
    output: str
    seconds: float
    tasks: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        task = ""
        for line in self.output.splitlines():
            if found := re.match(r"(?:RUNNING HANDLER|TASK) \[(?:[\w.]+ : )?(.+?)\] \*+", line):
                task = found.group(1)
            elif found := re.match(r"(ok|changed|skipping|fatal|failed): \[", line):
                self.tasks.setdefault(task, set()).add(found.group(1))

    def recap(self, name: str) -> int:
        return sum(int(n) for n in re.findall(rf"\b{name}=(\d+)", self.output.split("PLAY RECAP")[-1]))

    def with_outcome(self, outcome: str) -> list[str]:
        return [task for task, outcomes in self.tasks.items() if outcome in outcomes]


def apply_playbook(inventory: Path) -> Run:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "counters.yml"],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        preexec_fn=ahead_of_the_suite,
    )
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def write_inventory(folder: Path, root: Path, wheel: Path, bundle: Bundle) -> Path:
    """One merchant group with one counter: the root, reached through the chroot connection."""
    (folder / "group_vars").mkdir(parents=True)
    (folder / "hosts.yml").write_text(
        json.dumps(
            {
                "counters": {
                    "children": {
                        "merchant_corner_cafe": {"hosts": {str(root): {"ansible_connection": "chroot"}}}
                    }
                }
            }
        )
    )
    # This machine reaches PyPI through a TLS-inspecting proxy: its CA goes to the counter the way
    # an operator's would (shopcardd_extra_ca_certificates).
    extra_cas = sorted(str(p) for p in Path("/usr/local/share/ca-certificates").glob("*.crt"))
    (folder / "group_vars" / "merchant_corner_cafe.yml").write_text(
        json.dumps(
            {
                "shopcardd_merchant_id": MERCHANT,
                "shopcardd_wheel": str(wheel),
                "shopcardd_bundle_dir": str(bundle.folder),
                "shopcardd_ntp_servers": ["192.0.2.1"],
                "shopcardd_extra_ca_certificates": extra_cas,
            }
        )
    )
    return folder


@dataclass(frozen=True)
class Provisioned:
    root: Path
    bundle: Bundle
    first: Run
    second: Run
    notes: list[str]
    """Timings and findings, printed by the tests (the fixture cannot print past pytest's capture)."""

    def show(self, capsys: pytest.CaptureFixture[str], *more: str) -> None:
        with capsys.disabled():
            print("", *self.notes, *more, sep="\n  ")
        self.notes.clear()


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:
    if os.geteuid() != 0:
        service_missing("provisioning a root needs root (debootstrap, chroot, mount)")
    require_tool("debootstrap", "debootstrap")
    require_tool("chroot", "coreutils")
    if not BINFMT.exists() or not BINFMT.read_text().startswith("enabled"):
        service_missing(
            f"{BINFMT} is not registered: arm64 binaries cannot run here "
            "(apt-get install qemu-user-static binfmt-support; make test registers it)"
        )
    work = tmp_path_factory.mktemp("fleet")
    cached, how = cached_root()
    started = time.monotonic()
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True)
    notes = [f"arm64 bookworm root: {how}; copied for this run in {time.monotonic() - started:.0f} s"]
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    bundle = make_bundle(work)
    inventory = write_inventory(work / "inventory", root, build_wheel(work / "dist"), bundle)
    try:
        with mounted(root):
            first = apply_playbook(inventory)
            notes.append(f"playbook, first run: {first.seconds:.0f} s, changed={first.recap('changed')}")
            assert first.returncode == 0 and first.recap("failed") == 0, first.output[-6000:]
            second = apply_playbook(inventory)
            notes.append(f"playbook, second run: {second.seconds:.0f} s, changed={second.recap('changed')}")
            yield Provisioned(root, bundle, first, second, notes)
    finally:
        if not any(os.path.ismount(p) for p in [root / "proc", root / "var/cache/apt/archives"]):
            shutil.rmtree(root, ignore_errors=True)  # never while the host's caches are mounted in it


def in_root(root: Path, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    spec = [f"--userspec={user}:{user}"] if user else []
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/var/lib/shopcardd", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["chroot", *spec, str(root), *argv], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_first_run_takes_a_fresh_root_to_a_counter_and_skips_the_pi_only_steps(
    provisioned: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    first = provisioned.first
    skipped = [task for task, outcomes in first.tasks.items() if outcomes == {"skipping"}]
    provisioned.show(capsys, f"skipped off the Pi (or in a chroot): {'; '.join(skipped)}")
    assert first.recap("changed") > 0
    assert first.tasks[PI_ONLY_TASK] == {"skipping"}


def test_the_second_run_changes_nothing(provisioned: Provisioned, capsys: pytest.CaptureFixture[str]) -> None:
    second = provisioned.second
    changed = ", ".join(second.with_outcome("changed")) or "no task"
    provisioned.show(capsys, f"second run: changed={second.recap('changed')} ({changed})")
    assert second.returncode == 0, second.output[-6000:]
    assert second.with_outcome("changed") == [], second.output[-6000:]
    assert second.recap("changed") == 0 and second.recap("failed") == 0


def test_the_counter_in_the_root_accepts_a_voucher_and_refuses_another_merchants(
    provisioned: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the counter's own user, with the installed configuration (/etc/shopcardd/device.toml)."""
    cli = "/opt/shopcardd/venv/bin/shopcardd-device"
    good, foreign = provisioned.bundle.voucher(), provisioned.bundle.voucher(merchant="m-elsewhere")
    done = in_root(provisioned.root, cli, "verify", "--json", good, foreign, user="shopcardd")
    answers = [json.loads(line)["result"] for line in done.stdout.splitlines()]
    assert answers == ["accepted", "wrong_merchant"], done.stderr
    assert done.returncode == 1
    provisioned.show(capsys, f"shopcardd-device verify inside the arm64 root: {', '.join(answers)}")


def test_the_counter_holds_no_backend_library(provisioned: Provisioned) -> None:
    check = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    done = in_root(provisioned.root, "/opt/shopcardd/venv/bin/python", "-c", check, *BACKEND_ONLY, "zxingcpp")
    assert done.stdout.strip() == "['zxingcpp']", done.stderr
    cfg = (provisioned.root / "opt/shopcardd/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg  # apt's picamera2 and lgpio are seen on a Pi


def test_secrets_and_the_ledger_are_for_the_counter_user_only(provisioned: Provisioned) -> None:
    root = provisioned.root
    owner = {
        line.split(":")[0]: int(line.split(":")[2]) for line in (root / "etc/passwd").read_text().splitlines()
    }
    key, state = (root / "etc/shopcardd/device.private.pem").stat(), (root / "var/lib/shopcardd").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_uid) == (0o600, owner["shopcardd"])
    assert (stat.S_IMODE(state.st_mode), state.st_uid) == (0o700, owner["shopcardd"])
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert "shopcardd" in groups["video"] and "shopcardd" in groups["gpio"]


def test_the_units_are_enabled_and_pass_verify_where_their_commands_exist(
    provisioned: Provisioned, capsys: pytest.CaptureFixture[str]
) -> None:
    root = provisioned.root
    assert (root / "etc/systemd/system/multi-user.target.wants/shopcardd-verifier.service").is_symlink()
    assert (root / "etc/systemd/system/timers.target.wants/shopcardd-sync.timer").is_symlink()
    assert (root / "etc/systemd/system/multi-user.target.wants/systemd-timesyncd.service").exists() or (
        root / "etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service"
    ).exists()
    assert "NTP=192.0.2.1" in (root / "etc/systemd/timesyncd.conf.d/shopcardd.conf").read_text()
    done = systemd_analyze("verify", "--man=no", f"--root={root}", *COUNTER_UNITS)
    assert (done.returncode, done.stderr) == (0, "")
    for unit in COUNTER_UNITS[:2]:
        scored = systemd_analyze("security", "--offline=true", "--no-pager", f"--root={root}", unit)
        score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", scored.stdout).group(1))  # type: ignore[union-attr]
        provisioned.show(capsys, f"systemd-analyze security {unit} as installed in the root: {score:.1f}")
        assert score <= 2.5
