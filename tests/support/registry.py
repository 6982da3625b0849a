"""A real registry for tests: Debian's ``docker-registry`` (distribution 2.8).

``start_registry(workdir)`` runs ``docker-registry serve CONFIG`` on
127.0.0.1 with a free port and its own storage directory, waits until
``/v2/`` answers and returns a ``RunningRegistry``.  Its access log (combined
log format on the registry's stdout) is parsed by ``access_entries()`` so tests
can count requests and response bytes.  ``stop()`` ends it by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blobserver import BlobServer, start_blob_server
from .tools import ToolError, require_tool

# 127.0.0.1 - - [22/Nov/2026:01:23:20 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_RE = re.compile(
    r"^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<proto>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?'
)


@dataclass(frozen=True)
class AccessEntry:
    """One request as the registry logged it (``bytes``: response body bytes written)."""

    method: str
    path: str
    status: int
    bytes: int
    agent: str
    line: str

    @property
    def is_blob(self) -> bool:
        return "/blobs/" in self.path

    @property
    def is_manifest(self) -> bool:
        return "/manifests/" in self.path


def parse_access_log(text: str) -> list[AccessEntry]:
    """Parse combined-log-format lines; lines that are not access lines are skipped."""
    entries = []
    for line in text.splitlines():
        m = _ACCESS_RE.match(line)
        if m is None:
            continue
        size = m["bytes"]
        entries.append(
            AccessEntry(
                method=m["method"],
                path=m["path"],
                status=int(m["status"]),
                bytes=0 if size == "-" else int(size),
                agent=m["agent"] or "",
                line=line,
            )
        )
    return entries


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningRegistry:
    """A ``docker-registry`` process serving plain HTTP on 127.0.0.1."""

    host: str  # "127.0.0.1:PORT", for docker://HOST/REPO:TAG references
    url: str  # "http://127.0.0.1:PORT"
    workdir: Path
    storage: Path
    config: Path
    access_log: Path  # the registry's stdout: access log lines
    app_log: Path  # the registry's stderr: its own (logrus) log
    pid: int
    _proc: subprocess.Popen[bytes] = field(repr=False)
    #: With ``redirect=True``: the server that blob GETs are redirected (307) to.
    blob_server: BlobServer | None = None

    def ref(self, repo: str, tag: str = "latest") -> str:
        """``docker://HOST/REPO:TAG``."""
        return f"docker://{self.host}/{repo}:{tag}"

    def access_offset(self) -> int:
        """A mark in the access log; pass it to ``access_entries(since=...)``."""
        self._settle()
        return self.access_log.stat().st_size

    def access_entries(self, since: int = 0) -> list[AccessEntry]:
        """Requests logged after the mark *since* (default: all of them).

        The registry writes a line after the response completes, so this waits
        until the log has stopped growing for a short moment first.
        """
        self._settle()
        with open(self.access_log, "rb") as f:
            f.seek(since)
            return parse_access_log(f.read().decode("utf-8", "replace"))

    def _settle(self, quiet: float = 0.15, limit: float = 3.0) -> None:
        deadline = time.monotonic() + limit
        size = self.access_log.stat().st_size
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.03)
            now = self.access_log.stat().st_size
            if now != size:
                size, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return

    def get_json(self, path: str) -> dict[str, Any]:
        """GET ``url + path`` and parse JSON (e.g. ``/v2/_catalog``)."""
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process we started, by its pid: SIGTERM, then SIGKILL."""
        if self.blob_server is not None:
            self.blob_server.stop()
        if self._proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self._proc.wait(timeout=timeout)


def write_config(
    path: Path, storage: Path, port: int, *, redirect_baseurl: str | None = None
) -> None:
    """A minimal distribution 2.8 config (YAML is a superset of JSON)."""
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            # No background purge of upload directories while a test pushes.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "chunkah-tests"},
    }
    if redirect_baseurl is not None:
        cfg["middleware"] = {
            "storage": [{"name": "redirect", "options": {"baseurl": redirect_baseurl}}]
        }
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, app_log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(
                f"docker-registry exited with status {proc.returncode} before answering\n"
                f"--- log ---\n{app_log.read_text(errors='replace')[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = str(exc)
        time.sleep(0.05)
    raise ToolError(
        f"docker-registry did not answer {url}/v2/ within {timeout:g}s ({last_error})\n"
        f"--- log ---\n{app_log.read_text(errors='replace')[-4000:]}"
    )


def start_registry(
    workdir: str | os.PathLike[str],
    *,
    redirect: bool = False,
    multirange: str = "multipart",
    redirect_baseurl: str | None = None,
    ready_timeout: float = 20.0,
    attempts: int = 3,
) -> RunningRegistry:
    """Start ``docker-registry serve`` with storage under *workdir*.

    With *redirect*, the ``redirect`` storage middleware answers blob GETs with
    307 to a ``BlobServer`` (started here, stopped with the registry) that serves
    the storage directory with Range support and answers multi-range requests
    as *multirange* says (see ``blobserver``).  *redirect_baseurl* redirects to a
    server of your own instead.  A port taken between probe and bind is retried.
    """
    exe = require_tool("docker-registry")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "storage"
    storage.mkdir(exist_ok=True)
    blob_server = None
    if redirect:
        blob_server = start_blob_server(storage, multirange=multirange)
        redirect_baseurl = blob_server.url + "/"
    error: ToolError | None = None
    for attempt in range(attempts):
        port = free_port()
        config = work / "config.yml"
        write_config(config, storage, port, redirect_baseurl=redirect_baseurl)
        access_log = work / f"access-{attempt}.log"
        app_log = work / f"registry-{attempt}.log"
        with open(access_log, "wb") as out, open(app_log, "wb") as err:
            proc = subprocess.Popen(
                [exe, "serve", str(config)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=work,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, app_log, ready_timeout)
        except ToolError as exc:
            error = exc
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            if "address already in use" in app_log.read_text(errors="replace"):
                continue
            if blob_server is not None:
                blob_server.stop()
            raise
        return RunningRegistry(
            host=f"127.0.0.1:{port}",
            url=url,
            workdir=work,
            storage=storage,
            config=config,
            access_log=access_log,
            app_log=app_log,
            pid=proc.pid,
            _proc=proc,
            blob_server=blob_server,
        )
    if blob_server is not None:
        blob_server.stop()
    assert error is not None
    raise error


@contextmanager
def running_registry(workdir: str | os.PathLike[str], **kw: Any) -> Iterator[RunningRegistry]:
    """``start_registry`` as a context manager that always stops it."""
    reg = start_registry(workdir, **kw)
    try:
        yield reg
    finally:
        reg.stop()
