"""nginx on 127.0.0.1 with stock limits: a reverse proxy in front of a registry, or a
static file server (ranges and multi-range as nginx does them).

``start_nginx(workdir, upstream_host)`` proxies, ``start_nginx(workdir, root=DIR)``
serves DIR. Either writes a small config (default ``large_client_header_buffers 4
8k``, so a request header line above 8 KiB gets 400), starts ``nginx`` in the
foreground and returns a :class:`RunningNginx`; ``stop()`` ends it by pid.  Its
access log records method, URI, status, body bytes and the Range header of every
request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .registry import free_port
from .tools import ToolError, require_tool


@dataclass(frozen=True)
class NginxEntry:
    method: str
    uri: str
    status: int
    bytes: int
    range_length: int


@dataclass
class RunningNginx:
    host: str
    url: str
    workdir: Path
    access_log: Path
    pid: int
    _proc: subprocess.Popen[bytes] = field(repr=False)

    def entries(self) -> list[NginxEntry]:
        time.sleep(0.1)  # nginx writes the line when the response is done
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) != 5:
                continue
            method, uri, status, sent, rng = parts
            out.append(
                NginxEntry(method, uri, int(status), int(sent), len(rng) if rng != "-" else 0)
            )
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGQUIT)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self._proc.wait(timeout=timeout)


def start_nginx(
    workdir: str | os.PathLike[str],
    upstream_host: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> RunningNginx:
    if (upstream_host is None) == (root is None):
        raise ValueError("start_nginx: give either upstream_host or root")
    exe = require_tool("nginx")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    access = work / "access.log"
    access.touch()
    user = "user root;" if os.geteuid() == 0 else ""
    if upstream_host is not None:
        server = f"""location / {{
            proxy_pass http://{upstream_host};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }}"""
        probe = "/v2/"
    else:
        server = f"root {root};\n        location / {{ }}"
        probe = "/"
    conf.write_text(
        f"""{user}
worker_processes 1;
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format t '$request_method $uri $status $body_bytes_sent $http_range';
    access_log {access} t;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 0;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        {server}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "stderr.log", "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logs = [work / "stderr.log", work / "error.log"]
            text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
            raise ToolError(f"nginx exited with {proc.returncode}:\n{text}")
        try:
            with urllib.request.urlopen(url + probe, timeout=2) as resp:
                if resp.status == 200:
                    return RunningNginx(f"127.0.0.1:{port}", url, work, access, proc.pid, proc)
        except urllib.error.HTTPError:
            if root is not None:  # 403/404 on a directory root: it answers
                return RunningNginx(f"127.0.0.1:{port}", url, work, access, proc.pid, proc)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    raise ToolError(f"nginx did not answer {url}{probe} within 15 s")
