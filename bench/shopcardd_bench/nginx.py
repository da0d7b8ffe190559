"""nginx with the repository's site (systemd/nginx/shopcardd-api.conf) on loopback ports of
its own, in front of claim API processes: for ``shopcardd-bench claims --nginx`` and the
appliance test of the site (tests/appliance/test_nginx.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SITE = Path(__file__).resolve().parents[2] / "systemd" / "nginx" / "shopcardd-api.conf"


def site_with_ports(api_ports: list[int], port: int, site: Path = SITE) -> str:
    """The shipped site listening on loopback ``port``, its two upstream servers on
    ``api_ports``; every rewrite must find its line, so a changed site cannot slip past."""
    text = site.read_text()
    for old, new in [
        ("127.0.0.1:8001", f"127.0.0.1:{api_ports[0]}"),
        ("127.0.0.1:8002", f"127.0.0.1:{api_ports[1]}"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("listen [::]:80;", ""),
    ]:
        if old not in text:
            raise ValueError(f"{site} no longer has {old!r}")
        text = text.replace(old, new)
    return text


def nginx_conf(folder: Path) -> str:
    """A main configuration of its own (its files in ``folder``) that includes ``site.conf``."""
    temp = "".join(
        f"    {name}_temp_path {folder}/{name};\n" for name in ["proxy", "fastcgi", "uwsgi", "scgi"]
    )
    return f"""{"user root root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
{temp}    include {folder}/site.conf;
}}
"""


def nginx_exe() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


@contextlib.contextmanager
def running_nginx(folder: Path, api_ports: list[int], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with the site on ``port`` (loopback) in front of ``api_ports``, once its
    configuration checks out and it listens; stopped after."""
    exe = nginx_exe()
    if exe is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx-light")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.conf").write_text(site_with_ports(api_ports, port))
    (folder / "nginx.conf").write_text(nginx_conf(folder))
    conf = str(folder / "nginx.conf")
    checked = subprocess.run([exe, "-t", "-c", conf], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t: {checked.stderr.strip()}")
    proc = subprocess.Popen([exe, "-c", conf], stderr=subprocess.DEVNULL)
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start; see {folder / 'error.log'}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
