"""nginx with the repository's own site (systemd/nginx/shopcardd-api.conf), run on loopback: for
``shopcardd-bench claims --nginx`` and ``rehearsal``, and the appliance test of the site.

The site is copied with its ports and certificate paths substituted, each substitution a line
that must be found, so what runs is the shipped file and a changed site cannot slip past a
test or the rehearsal unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "systemd" / "nginx" / "shopcardd-api.conf"
UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+( .*;)\n", re.MULTILINE)
TLS_FILES = {"/etc/shopcardd/tls/server.pem": "server.pem", "/etc/shopcardd/tls/server.key": "server.key"}


def _replace(site: str, old: str, new: str) -> str:
    if old not in site:
        raise ValueError(f"{SITE} no longer has {old!r}")
    return site.replace(old, new)


def site_for(
    api_ports: list[int], http_port: int | None, https_port: int | None, tls: Path | None, site: Path = SITE
) -> str:
    """The site with one upstream ``server`` line per API port (the shipped lines' options kept),
    plain http on ``http_port`` and https on ``https_port`` with the certificate in ``tls``, all
    on 127.0.0.1; a listener given None is dropped."""
    text = site.read_text()
    servers = list(UPSTREAM_SERVER.finditer(text))
    if not servers:
        raise ValueError(f"{site} has no `server 127.0.0.1:PORT ...;` line in its upstream")
    indent, options = servers[0].group(1), servers[0].group(2)
    lines = "".join(f"{indent}server 127.0.0.1:{port}{options}\n" for port in api_ports)
    text = text[: servers[0].start()] + lines + text[servers[-1].end() :]
    text = _replace(text, "listen 80;", f"listen 127.0.0.1:{http_port};" if http_port else "")
    text = _replace(text, "listen [::]:80;", "")
    tls_listen = f"listen 127.0.0.1:{https_port} ssl http2;" if https_port else ""
    text = _replace(text, "listen 443 ssl http2;", tls_listen)
    text = _replace(text, "listen [::]:443 ssl http2;", "")
    for shipped, name in TLS_FILES.items():
        if https_port:
            if tls is None:
                raise ValueError("https needs the folder of server.pem and server.key")
            text = _replace(text, shipped, str(tls / name))
        else:
            text = re.sub(rf"^\s*ssl_certificate\S* {re.escape(shipped)};\n", "", text, flags=re.MULTILINE)
    return text


def site_with_ports(api_ports: list[int], port: int, site: Path = SITE) -> str:
    """The shipped site on plain http at loopback ``port`` in front of ``api_ports`` (its TLS lines
    dropped)."""
    return site_for(api_ports, port, None, None, site)


def nginx_conf(folder: Path, access_log: bool = True) -> str:
    """A main configuration of our own (its files in ``folder``) that includes ``folder/site.conf``;
    ``access_log``: one line per request in ``folder/access.log`` (off for a load run)."""
    names = ["proxy", "fastcgi", "uwsgi", "scgi"]
    temp = "".join(f"    {name}_temp_path {folder}/{name};\n" for name in names)
    return f"""{"user root root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {f"{folder}/access.log" if access_log else "off"};
    client_body_temp_path {folder}/body;
{temp}    include {folder}/site.conf;
}}
"""


def nginx_exe() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


class Nginx:
    """nginx on the site that ``site_for`` made, in ``folder``: checked with ``nginx -t`` first."""

    def __init__(self, exe: str, folder: Path, site: str, access_log: bool = False) -> None:
        self.exe, self.folder = exe, folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site.conf").write_text(site)
        (folder / "nginx.conf").write_text(nginx_conf(folder, access_log))
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        checked = subprocess.run(
            [self.exe, "-t", "-c", str(self.folder / "nginx.conf")], capture_output=True, text=True
        )
        if checked.returncode:
            raise RuntimeError(f"nginx -t refused the site: {checked.stderr.strip()}")

    def start(self) -> None:
        self.check()
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.folder / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
