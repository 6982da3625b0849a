"""A small static file server with HTTP Range support, for CDN-like behaviour.

It serves a directory (e.g. a docker-registry storage root, as the target of
the registry's ``redirect`` middleware) on 127.0.0.1 from a thread, logs
every request in memory (method, path, Range header, status, body bytes) and
answers multi-range requests in one of the ways real servers do:

- ``"multipart"``: 206 with ``multipart/byteranges`` (RFC 9110),
- ``"full"``: 200 with the whole body (ranges ignored),
- ``"416"`` / ``"501"`` / ``"400"``: that status, no body.

Single ranges always get a proper 206 unless ``ranges=False`` (then 200 + body).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
BOUNDARY = "chunkah-test-boundary"


@dataclass(frozen=True)
class BlobRequest:
    method: str
    path: str
    range: str | None
    status: int
    bytes: int


@dataclass
class BlobServer:
    """A running server; ``stop()`` shuts it down."""

    root: Path
    multirange: str = "multipart"
    ranges: bool = True
    requests: list[BlobRequest] = field(default_factory=list)
    host: str = ""
    url: str = ""
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self, entry: BlobRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def take_requests(self) -> list[BlobRequest]:
        """The requests so far, clearing the log."""
        with self._lock:
            out, self.requests = self.requests, []
            return out

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``bytes=a-b,c-`` → inclusive (start, end) pairs; None when unsatisfiable/invalid."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or not spec:
        return None
    out = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if m is None:
            return None
        first, last = m.groups()
        if first == "" and last == "":
            return None
        if first == "":  # suffix: the last N bytes
            n = int(last)
            if n == 0:
                continue
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = size - 1 if last == "" else min(int(last), size - 1)
            if start > end or start >= size:
                continue
        out.append((start, end))
    return out or None


# A response body: literal bytes and inclusive (start, end) spans of the file, in order.
_Body = list[bytes | tuple[int, int]]


def _make_handler(server: BlobServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _send(
            self,
            status: int,
            headers: dict[str, str],
            body: _Body,
            rng: str | None,
            file: Path | None = None,
        ) -> None:
            length = sum(len(x) if isinstance(x, bytes) else x[1] - x[0] + 1 for x in body)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            sent = 0
            if self.command != "HEAD":
                f = open(file, "rb") if file is not None else None  # noqa: SIM115
                try:
                    for item in body:
                        if isinstance(item, bytes):
                            self.wfile.write(item)
                            sent += len(item)
                            continue
                        assert f is not None
                        f.seek(item[0])
                        left = item[1] - item[0] + 1
                        while left:
                            buf = f.read(min(left, 1 << 20))
                            if not buf:
                                break
                            self.wfile.write(buf)
                            sent += len(buf)
                            left -= len(buf)
                finally:
                    if f is not None:
                        f.close()
            server.log(BlobRequest(self.command, self.path, rng, status, sent))

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            full = (server.root / rel).resolve()
            if server.root.resolve() not in full.parents or not full.is_file():
                self._send(404, {}, [b"not found\n"], rng)
                return
            size = full.stat().st_size
            whole: _Body = [(0, size - 1)] if size else []
            octet = {"Content-Type": "application/octet-stream"}
            base = {"Accept-Ranges": "bytes" if server.ranges else "none"}
            if rng is None or not server.ranges:
                self._send(200, {**base, **octet}, whole, rng, full)
                return
            spans = _parse_ranges(rng, size)
            if spans is None:
                self._send(416, {**base, "Content-Range": f"bytes */{size}"}, [], rng)
                return
            if len(spans) == 1:
                a, b = spans[0]
                headers = {**base, **octet, "Content-Range": f"bytes {a}-{b}/{size}"}
                self._send(206, headers, [(a, b)], rng, full)
                return
            if server.multirange == "full":
                self._send(200, {**base, **octet}, whole, rng, full)
                return
            if server.multirange in ("416", "501", "400"):
                self._send(int(server.multirange), base, [], rng)
                return
            body: _Body = []
            for a, b in spans:
                body.append(
                    f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n".encode()
                )
                body += [(a, b), b"\r\n"]
            body.append(f"--{BOUNDARY}--\r\n".encode())
            ctype = f"multipart/byteranges; boundary={BOUNDARY}"
            self._send(206, {**base, "Content-Type": ctype}, body, rng, full)

    return Handler


def start_blob_server(
    root: str | os.PathLike[str], *, multirange: str = "multipart", ranges: bool = True
) -> BlobServer:
    """Serve *root* on 127.0.0.1:<free port> from a daemon thread."""
    if multirange not in ("multipart", "full", "416", "501", "400"):
        raise ValueError(f"unknown multirange behaviour {multirange!r}")
    srv = BlobServer(root=Path(root), multirange=multirange, ranges=ranges)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(srv))
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    srv.host = f"127.0.0.1:{port}"
    srv.url = f"http://127.0.0.1:{port}"
    srv._server = httpd
    srv._thread = threading.Thread(target=httpd.serve_forever, name="blob-server", daemon=True)
    srv._thread.start()
    return srv
