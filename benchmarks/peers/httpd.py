"""nginx serving a directory on 127.0.0.1 (ranges and multi-range as nginx does them).

Its access log records method, URI, status, body bytes sent and the Range header of
every request; ``entries_since(mark)`` sums what one client fetched.  Stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.registry import free_port
from support.tools import ToolError, require_tool


@dataclass(frozen=True)
class Served:
    url: str
    access_log: Path

    def mark(self) -> int:
        time.sleep(0.1)
        return self.access_log.stat().st_size

    def since(self, mark: int) -> tuple[int, int, dict[str, int]]:
        """(requests, body bytes, statuses) logged after *mark*."""
        time.sleep(0.2)  # nginx writes the line when the response is done
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            lines = f.read().decode("utf-8", "replace").splitlines()
        requests = nbytes = 0
        statuses: dict[str, int] = {}
        for line in lines:
            parts = line.split(" ", 4)
            if len(parts) < 4:
                continue
            requests += 1
            nbytes += int(parts[3])
            statuses[parts[2]] = statuses.get(parts[2], 0) + 1
        return requests, nbytes, statuses


@contextlib.contextmanager
def serve_directory(root: Path, work: Path) -> Iterator[Served]:
    exe = require_tool("nginx")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    access = work / "access.log"
    access.touch()
    conf = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
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
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""
    )
    with open(work / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [exe, "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise ToolError(f"nginx exited with {proc.returncode}: see {work}")
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # 403/404 on the root: it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise ToolError(f"nginx did not answer {url} within 15 s") from None
                time.sleep(0.05)
        yield Served(url, access)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
