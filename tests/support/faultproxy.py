"""A fault-injecting HTTP proxy (aiohttp) to put in front of a real registry.

``async with FaultProxy(upstream_url, faults=[Fault("reset", nth=1, after=1000)]) as p``
listens on 127.0.0.1:<free port> and forwards every request to *upstream_url*,
except that the requests a :class:`Fault` selects are broken on purpose:

=================  ==============================================================
``reset``          send ``after`` body bytes, then a TCP reset (SO_LINGER 0)
``truncate``       send ``after`` body bytes, then close cleanly (short body)
``flip``           invert the body byte at offset ``after``
``ignore-range``   drop the request's ``Range``: the upstream answers 200 + body
``status``         answer ``status`` (e.g. 416, 501, 429, 503) without asking
                   upstream, with ``Retry-After: retry_after`` when given; a 416
                   carries ``Content-Range: bytes */size`` and, like
                   docker-registry, a Content-Length of the whole blob
``drip``           send ``after`` bytes, then one byte every ``delay`` seconds
``body``           answer 200 with ``body`` and ``headers`` instead
``header``         forward, but replace the response's ``headers`` (a lying
                   ``Content-Range``, a bogus ``Content-Length``)
``redirect``       answer 307 to ``body`` (a URL), or to the request's own URL
                   when ``body`` is empty (a redirect loop)
=================  ==============================================================

A fault applies to requests of its ``match`` class (``"blob"``: blob GETs,
``"manifest"``, ``"any"``) numbered ``nth`` .. ``nth + times - 1`` within that
class (1-based; ``nth=None``: all of them).  ``requests`` logs every request with
the body bytes the proxy sent, so a test can prove that no blob went twice.

``auth="bearer"`` makes the proxy demand its own tokens (``/token`` issues them
and logs the scopes asked); ``redirect_blobs_to`` answers blob GETs with 307 to
another server (a different origin), as registries do with CDNs.  ``rate`` (bytes
per second) paces blob bodies like a real link, so a client killed mid-response has
only a little in flight (on loopback the kernel buffers would take it all at once).

``proxy_thread(upstream, ...)`` runs a proxy in a background thread (its own event
loop) for tests that drive the CLI in subprocesses; it yields the started proxy.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Fault:
    kind: str
    nth: int | None = 1
    times: int = 1
    match: str = "blob"
    after: int = 0
    status: int = 0
    retry_after: str | None = None
    delay: float = 2.0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def applies(self, kind: str, n: int) -> bool:
        if self.match != "any" and self.match != kind:
            return False
        return self.nth is None or self.nth <= n < self.nth + self.times


@dataclass(frozen=True)
class ProxyRequest:
    n: int  #: number within its class
    kind: str  #: "blob", "manifest", "token", "other"
    method: str
    path: str
    range: str | None
    status: int
    bytes: int  #: body bytes sent to the client
    fault: str | None
    authorization: str | None


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        faults: list[Fault] | None = None,
        *,
        auth: str | None = None,
        redirect_blobs_to: str | None = None,
        blob_size: int | None = None,
        rate: float | None = None,
    ) -> None:
        self.rate = rate
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults or [])
        self.auth = auth
        self.redirect_blobs_to = redirect_blobs_to
        self.blob_size = blob_size
        self.requests: list[ProxyRequest] = []
        self.tokens: set[str] = set()
        self.token_scopes: list[list[str]] = []
        self.url = ""
        self.host = ""
        self._counts: dict[str, int] = {}
        self._inflight = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle --
    async def start(self) -> FaultProxy:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        port = server.sockets[0].getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- accounting --
    def blob_requests(self) -> list[ProxyRequest]:
        return [r for r in self.requests if r.kind == "blob"]

    def blob_bytes(self) -> int:
        return sum(r.bytes for r in self.blob_requests())

    @property
    def active(self) -> int:
        """Requests being answered now (a test waits for 0 before adding up bytes)."""
        return self._inflight

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # -- handling --
    @staticmethod
    def _kind(request: web.Request) -> str:
        path = request.path
        if path == "/token":
            return "token"
        if "/blobs/" in path and "/uploads/" not in path and request.method == "GET":
            return "blob"
        if "/manifests/" in path:
            return "manifest"
        return "other"

    def _log(
        self,
        n: int,
        kind: str,
        request: web.Request,
        status: int,
        sent: int,
        fault: Fault | None,
    ) -> None:
        self.requests.append(
            ProxyRequest(
                n,
                kind,
                request.method,
                request.path_qs,
                request.headers.get("Range"),
                status,
                sent,
                fault.kind if fault else None,
                request.headers.get("Authorization"),
            )
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._inflight += 1
        try:
            return await self._answer(request)
        finally:
            self._inflight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        n = self._counts[kind] = self._counts.get(kind, 0) + 1
        if kind == "token":
            return self._token(request, n)
        if self.auth == "bearer" and request.path.startswith("/v2"):
            authz = request.headers.get("Authorization", "")
            if authz.removeprefix("Bearer ") not in self.tokens:
                repo = request.path.removeprefix("/v2/").split("/blobs/")[0].split("/manifests/")[0]
                resp = web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401,
                    headers={
                        "WWW-Authenticate": f'Bearer realm="{self.url}/token",'
                        f'service="faultproxy",scope="repository:{repo}:pull"'
                    },
                )
                self._log(n, kind, request, 401, 0, None)
                return resp
        if kind == "blob" and self.redirect_blobs_to:
            target = self.redirect_blobs_to.rstrip("/") + request.path_qs
            self._log(n, kind, request, 307, 0, None)
            raise web.HTTPTemporaryRedirect(target)
        fault = next((f for f in self.faults if f.applies(kind, n)), None)
        if fault is not None and fault.kind == "status":
            return self._status(request, n, kind, fault)
        if fault is not None and fault.kind == "redirect":
            target = fault.body.decode() or (self.url + request.path_qs)
            self._log(n, kind, request, 307, 0, fault)
            raise web.HTTPTemporaryRedirect(target)
        if fault is not None and fault.kind == "body":
            resp = web.Response(status=200, body=fault.body, headers=fault.headers)
            self._log(n, kind, request, 200, len(fault.body), fault)
            return resp
        return await self._forward(request, n, kind, fault)

    def _token(self, request: web.Request, n: int) -> web.Response:
        token = f"tok-{n}"
        self.tokens.add(token)
        self.token_scopes.append(request.query.getall("scope", []))
        self._log(n, "token", request, 200, 0, None)
        return web.json_response({"token": token, "expires_in": 300})

    def _status(self, request: web.Request, n: int, kind: str, fault: Fault) -> web.Response:
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        body = b""
        if fault.status == 416 and self.blob_size is not None:
            headers.setdefault("Content-Range", f"bytes */{self.blob_size}")
        resp = web.Response(status=fault.status, body=body, headers=headers)
        self._log(n, kind, request, fault.status, 0, fault)
        return resp

    async def _forward(
        self, request: web.Request, n: int, kind: str, fault: Fault | None
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if self.auth:
            headers.pop("Authorization", None)
        headers["Host"] = request.host  # the registry builds Location URLs from it
        if fault is not None and fault.kind == "ignore-range":
            headers.pop("Range", None)
        data = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=data or None,
            allow_redirects=False,
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in _HOP or k.lower() == "content-length":
                    resp.headers.add(k, v)
            if fault is not None and fault.kind == "header":
                for k, v in fault.headers.items():
                    resp.headers[k] = v
            await resp.prepare(request)
            sent = 0
            try:
                async for chunk in up.content.iter_any():
                    breaks = fault is not None and fault.kind in ("reset", "truncate", "drip")
                    if breaks and fault is not None and sent + len(chunk) >= fault.after:
                        head = chunk[: fault.after - sent]
                        await resp.write(head)
                        sent += len(head)
                        if fault.kind == "drip":
                            sent += await self._drip(resp, chunk[len(head) :], fault)
                        self._break(request, reset=fault.kind == "reset")
                        self._log(n, kind, request, up.status, sent, fault)
                        return resp
                    flips = fault is not None and fault.kind == "flip"
                    if flips and fault is not None and sent <= fault.after < sent + len(chunk):
                        i = fault.after - sent
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    if self.rate and kind == "blob":
                        for i in range(0, len(chunk), 16384):
                            piece = chunk[i : i + 16384]
                            if request.transport is None or request.transport.is_closing():
                                raise ConnectionResetError("the client went away")
                            await resp.write(piece)
                            sent += len(piece)
                            await asyncio.sleep(len(piece) / self.rate)
                        continue
                    await resp.write(chunk)
                    sent += len(chunk)
                await resp.write_eof()
            except (ConnectionError, aiohttp.ClientError):
                pass  # the client went away (e.g. closed after its idle timeout)
            except asyncio.CancelledError:
                # aiohttp cancels the handler when the client disconnects (a killed
                # client): what was sent until then still counts.
                self._log(n, kind, request, up.status, sent, fault)
                raise
            self._log(n, kind, request, up.status, sent, fault)
            return resp

    async def _drip(self, resp: web.StreamResponse, rest: bytes, fault: Fault) -> int:
        sent = 0
        for i in range(min(len(rest), 20)):  # bounded: at most 20 slow bytes
            await asyncio.sleep(fault.delay)
            try:
                await resp.write(rest[i : i + 1])
            except (ConnectionError, aiohttp.ClientError):
                break
            sent += 1
        return sent

    @staticmethod
    def _break(request: web.Request, *, reset: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if reset:
            transport.abort()
        else:
            transport.close()


@contextmanager
def proxy_thread(
    upstream: str, faults: list[Fault] | None = None, **kw: Any
) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` served by its own event loop in a daemon thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = FaultProxy(upstream, faults, **kw)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(30)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
