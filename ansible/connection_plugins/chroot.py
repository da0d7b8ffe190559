"""An Ansible connection that runs every task inside a directory tree with chroot(8).

Why: a counter's SD card can be set up before it ever boots (its root mounted on a workstation),
and tests/appliance applies the playbook to a real arm64 Debian root this way (qemu-user runs its
binaries), with real apt and real file changes. The host (``ansible_host``, else the inventory
name) is the path of the root. Must run as root.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
    name: chroot
    short_description: run tasks in a directory tree with chroot(8)
    description:
        - Runs commands and copies files inside a root directory (a mounted SD card, a debootstrap tree).
    author: ShopCardd
    options:
      remote_addr:
        description: The path of the root directory.
        default: inventory_hostname
        type: str
        vars:
          - name: inventory_hostname
          - name: ansible_host
    extends_documentation_fragment:
        - connection_pipelining
"""

# What a command inside the root sees: none of the controller's virtual environment or locale.
ROOT_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}


class Connection(ConnectionBase):
    transport = "chroot"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def _connect(self) -> Connection:
        root = self.get_option("remote_addr")
        if not os.path.isfile(os.path.join(root, "bin", "sh")):
            raise AnsibleError(f"{root} is not a root directory (no /bin/sh in it)")
        self.root = root
        self._connected = True
        return self

    def _run(self, argv: list[str], stdin: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        self._connect()
        return subprocess.Popen(
            ["chroot", self.root, *argv],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ROOT_ENVIRONMENT,
        )

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = False
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = self._run(["/bin/sh", "-c", cmd])
        out, err = proc.communicate(in_data)
        return proc.returncode, out, err

    def put_file(self, in_path: str, out_path: str) -> None:
        """Written from inside the root, so a symbolic link in the path resolves as the root sees it."""
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as source:
            proc = self._run(["/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"], stdin=source.fileno())
            _, err = proc.communicate()
        if proc.returncode:
            raise AnsibleError(f"cannot write {out_path} in {self.root}: {err.decode(errors='replace')}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        proc = self._run(["cat", in_path])
        out, err = proc.communicate()
        if proc.returncode:
            raise AnsibleError(f"cannot read {in_path} in {self.root}: {err.decode(errors='replace')}")
        with open(out_path, "wb") as target:
            target.write(out)

    def close(self) -> None:
        self._connected = False
