"""Fetching byte ranges of one blob from a registry that may not like ranges.

:class:`RangeFetcher` executes a list of ``(offset, length)`` ranges against one
blob and hands back each range's bytes.  The fallback ladder (docs/registry-client.md):

1. **Probe** with the first span alone.  Anything but a proper single-range 206 (200
   with the body, 400, 416, 501, a missing or wrong ``Content-Range``) switches the
   blob to **one whole download** at once: a 200 body *is* that download (it is
   spooled to a temporary file and sha256-verified, never parsed as ranges); the
   ranges are then cut from the file.
2. **Multi-range probe**: the largest planned request goes alone.  ``multipart/
   byteranges`` confirms multi-range; a 206 with one of the spans means the server
   serves one range per request (``max_ranges`` becomes 1); 400/416/501 halve the
   ranges per request; 200 is again the whole download.
3. **Concurrent** requests (``concurrency`` in flight), each at most ``max_ranges``
   spans and ``max_header_bytes`` of header, halving on 400/416/501, retrying 429/5xx
   and broken streams with backoff; a retry asks only for the bytes not yet received.

A blob is downloaded whole at most once per fetcher; a 200 that arrives while the
whole download runs is closed unread.  Bytes of each range may be checked by a
caller's ``check(index, data)`` (e.g. against a TOC's sha256); a range that fails is
fetched again ``refetch`` times, then :class:`RegistryDigestError` is raised.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp

from chunkah.errors import InputError

from .client import TRANSPORT_ERRORS, RegistryClient, _describe, _RetryableStatus
from .errors import RegistryDigestError, RegistryNotFoundError, RegistryRequestError
from .ranges import (
    MultipartByteRangesParser,
    MultipartError,
    Span,
    merge_ranges,
    multipart_boundary,
    parse_content_range,
    plan_requests,
    range_header,
    validate_ranges,
)
from .reference import RegistryReference
from .retry import is_retryable_status, parse_retry_after

__all__ = ["RangeCheck", "RangeFetcher", "RangeOptions", "RangeResult"]

#: ``check(index, data) -> bool``: True when the bytes of the caller's range ``index`` are right.
RangeCheck = Callable[[int, bytes], bool]

UNKNOWN, SINGLE, MULTI, WHOLE = "unknown", "single", "multi", "whole"
_MAX_ROUNDS = 10_000


@dataclass(frozen=True)
class RangeOptions:
    """Limits of range requests.  ``max_header_bytes`` bounds the whole ``Range:`` line."""

    max_ranges: int = 256
    max_header_bytes: int = 8192
    merge_gap: int = 1024
    concurrency: int = 4
    refetch: int = 1


@dataclass(frozen=True)
class RangeResult:
    """The bytes of the caller's range number ``index`` (``offset``, ``len(data)``)."""

    index: int
    offset: int
    data: bytes


@dataclass(eq=False)
class _Entry:
    """A merged span being fetched: its bytes so far and the caller's ranges inside it."""

    span: Span
    members: list[int]
    buf: bytearray = field(default_factory=bytearray)
    done: bool = False

    @property
    def want(self) -> Span:
        """What is still missing (a resumed request asks only for this)."""
        return Span(self.span.start + len(self.buf), self.span.end)


class _Halve(Exception):
    pass


class _Whole(Exception):
    pass


class RangeFetcher:
    """Fetch byte ranges of one blob; ``async with`` removes any spooled download.

    ``size`` (from the descriptor) lets ranges be checked before any request and
    every ``Content-Range`` total be compared; ``spool_dir`` is where a whole-blob
    fallback is stored (default: the system temporary directory).
    """

    def __init__(
        self,
        client: RegistryClient,
        ref: RegistryReference,
        digest: str,
        size: int | None = None,
        *,
        options: RangeOptions | None = None,
        check: RangeCheck | None = None,
        spool_dir: Path | str | None = None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.digest = digest
        self.size = size
        self.options = options or RangeOptions()
        self.check = check
        self.spool_dir = spool_dir
        self.mode = UNKNOWN
        self.max_ranges = self.options.max_ranges
        self.spool: Path | None = None
        self._whole_lock = asyncio.Lock()
        self._round: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[RangeResult | None] = asyncio.Queue()
        self._refetch_left: dict[int, int] = {}
        self._wanted: list[Span] = []
        self._pending: list[_Entry] = []

    async def __aenter__(self) -> RangeFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)
            self.spool = None
            if self.mode == WHOLE:
                self.mode = UNKNOWN

    # -- public --
    async def fetch_all(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of every range, in the order given."""
        out: list[bytes | None] = [None] * len(ranges)
        async for r in self.fetch(ranges):
            out[r.index] = r.data
        assert all(b is not None for b in out)
        return [b for b in out if b is not None]

    async def fetch(self, ranges: Sequence[tuple[int, int]]) -> AsyncIterator[RangeResult]:
        """Yield a :class:`RangeResult` per range as soon as its bytes are complete."""
        try:
            self._wanted = validate_ranges(ranges, self.size)
        except ValueError as exc:
            raise InputError(f"blob {self.digest}: {exc}") from None
        merged = merge_ranges(self._wanted, max_gap=self.options.merge_gap)
        starts = [s.start for s in merged]
        entries = [_Entry(s, []) for s in merged]
        for i, w in enumerate(self._wanted):
            entries[bisect.bisect_right(starts, w.start) - 1].members.append(i)
        self._pending = entries
        self._refetch_left = dict.fromkeys(range(len(self._wanted)), self.options.refetch)
        self._queue = asyncio.Queue()
        runner = asyncio.create_task(self._run_and_finish())
        try:
            while (item := await self._queue.get()) is not None:
                yield item
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner

    # -- the ladder --
    async def _run_and_finish(self) -> None:
        try:
            await self._run()
        finally:
            self._queue.put_nowait(None)

    async def _run(self) -> None:
        for _round in range(_MAX_ROUNDS):
            todo = [e for e in self._pending if not e.done]
            if not todo:
                return
            if self.mode == WHOLE:
                await self._serve_spool(todo)
                continue
            if self.mode == UNKNOWN:
                await self._group([todo[0]])
                continue
            by_want = {e.want: e for e in todo}
            groups = [
                [by_want[s] for s in g]
                for g in plan_requests(
                    sorted(by_want),
                    max_ranges=self.max_ranges,
                    max_header_bytes=self.options.max_header_bytes,
                )
            ]
            if self.mode == SINGLE and self.max_ranges > 1 and any(len(g) > 1 for g in groups):
                await self._group(max(groups, key=len))
                continue
            await self._concurrently(groups)
        raise RegistryRequestError(f"blob {self.digest}: range fetching made no progress")

    async def _concurrently(self, groups: list[list[_Entry]]) -> None:
        sem = asyncio.Semaphore(self.options.concurrency)

        async def one(group: list[_Entry]) -> None:
            async with sem:
                if self.mode != WHOLE:
                    await self._group(group)

        tasks = [asyncio.create_task(one(g)) for g in groups]
        self._round = set(tasks)
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._round = set()
            for t in tasks:
                t.cancel()
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r

    async def _group(self, entries: list[_Entry]) -> None:
        """One request for ``entries`` (resumed and retried until they are complete)."""
        policy = self.client.retry
        stats = self.client.stats
        failures = 0
        while True:
            todo = [e for e in entries if not e.done]
            if not todo or self.mode == WHOLE:
                return
            req = {e.want: e for e in todo}
            spans = sorted(req)
            header = range_header(spans)
            stats.range_requests += 1
            stats.ranges_requested += len(spans)
            before = sum(len(e.buf) for e in todo) + sum(e.done for e in todo)
            retry_after: float | None = None
            try:
                resp = await self.client.open_blob(self.ref, self.digest, {"Range": header})
                try:
                    await self._consume(resp, req, spans)
                    failure = ""
                finally:
                    resp.close()
            except (_Halve, _Whole):
                return
            except _RetryableStatus as exc:
                failure, retry_after = str(exc), exc.retry_after
            except MultipartError as exc:
                failure = f"bad multipart answer: {exc}"
                if "truncated" not in str(exc) and self.max_ranges > 1:
                    # A server (or proxy) that mangles multipart gets one range at a time.
                    self.max_ranges = 1
                    stats.halvings += 1
                    return
            except TRANSPORT_ERRORS as exc:
                failure = _describe(exc)
            if not failure:
                progressed = sum(len(e.buf) for e in todo) + sum(e.done for e in todo) > before
                if progressed or all(e.done for e in todo):
                    continue
                failure = "the answer lacked some of the requested ranges"
            failures += 1
            if failures >= policy.attempts:
                raise RegistryRequestError(
                    f"GET {self.client.blob_url(self.ref, self.digest)} "
                    f"({len(spans)} range{'s' if len(spans) > 1 else ''}) failed after "
                    f"{failures} attempts: {failure}",
                    attempts=failures,
                )
            stats.retries += 1
            await asyncio.sleep(policy.delay(failures, retry_after))

    async def _consume(
        self, resp: aiohttp.ClientResponse, req: dict[Span, _Entry], spans: list[Span]
    ) -> None:
        status = resp.status
        if status == 206:
            boundary = multipart_boundary(resp.headers.get("Content-Type", ""))
            if boundary is not None:
                await self._read_multipart(resp, boundary, req, spans)
                if len(spans) > 1:
                    self.mode = MULTI
                elif self.mode == UNKNOWN:
                    self.mode = SINGLE
                return
            span = self._single_span(resp, spans)
            if span is None:
                await self._go_whole(None)
                raise _Whole
            if len(spans) > 1 and self.max_ranges > 1:
                # Asked for several, got one: this server serves one range per request.
                self.max_ranges = 1
                self.client.stats.halvings += 1
            await self._read_single(resp, req[span])
            if self.mode == UNKNOWN:
                self.mode = SINGLE
            return
        if status == 200:
            await self._go_whole(resp)
            raise _Whole
        if status == 416:
            self._check_unsatisfiable(resp, spans)
        if status in (400, 416, 501) or (
            400 <= status < 500 and status not in (401, 403, 404, 408, 429)
        ):
            if len(spans) > 1:
                self.max_ranges = max(1, min(self.max_ranges, len(spans) // 2))
                self.client.stats.halvings += 1
                raise _Halve
            await self._go_whole(None)
            raise _Whole
        detail = f"{status} {resp.reason or ''}".strip()
        if is_retryable_status(status):
            raise _RetryableStatus(
                status, detail, parse_retry_after(resp.headers.get("Retry-After"))
            )
        url = self.client.blob_url(self.ref, self.digest)
        if status == 404:
            raise RegistryNotFoundError(f"GET {url}: blob not found ({detail})")
        raise self.client._status_error("GET", url, status, detail, 1)

    def _check_unsatisfiable(self, resp: aiohttp.ClientResponse, spans: list[Span]) -> None:
        """A 416 because a range lies beyond the blob is an error of the ranges, not of
        the server: say so instead of downloading the blob."""
        try:
            cr = parse_content_range(resp.headers.get("Content-Range", ""))
        except ValueError:
            return
        if cr.span is None and cr.total is not None and max(s.end for s in spans) > cr.total:
            raise RegistryDigestError(
                f"blob {self.digest} is {cr.total} bytes; range {max(spans, key=lambda s: s.end)} "
                "lies beyond it (a table of contents that lies about offsets?)"
            )

    def _single_span(self, resp: aiohttp.ClientResponse, spans: list[Span]) -> Span | None:
        """The requested span a non-multipart 206 carries, or None if it is not proper."""
        try:
            cr = parse_content_range(resp.headers.get("Content-Range", ""))
        except ValueError:
            return None
        if cr.span is None or cr.span not in spans:
            return None
        if self.size is not None and cr.total not in (None, self.size):
            return None
        if resp.content_length is not None and resp.content_length != cr.span.length:
            return None
        return cr.span

    async def _read_single(self, resp: aiohttp.ClientResponse, entry: _Entry) -> None:
        stats = self.client.stats
        async for chunk in resp.content.iter_any():
            stats.bytes_received += len(chunk)
            stats.blob_bytes += len(chunk)
            if len(entry.buf) + len(chunk) > entry.span.length:
                raise MultipartError(f"206 body longer than its Content-Range {entry.want}")
            entry.buf += chunk
        if len(entry.buf) < entry.span.length:
            raise MultipartError(f"206 body for {entry.want} truncated")
        await self._complete(entry)

    async def _read_multipart(
        self,
        resp: aiohttp.ClientResponse,
        boundary: str,
        req: dict[Span, _Entry],
        spans: list[Span],
    ) -> None:
        stats = self.client.stats
        parser = MultipartByteRangesParser(boundary, spans, self.size)
        async for chunk in resp.content.iter_any():
            stats.bytes_received += len(chunk)
            stats.blob_bytes += len(chunk)
            for piece in parser.feed(chunk):
                entry = req[piece.span]
                entry.buf += piece.data
                if len(entry.buf) == entry.span.length:
                    await self._complete(entry)
        parser.close()

    async def _complete(self, entry: _Entry) -> None:
        """Hand out the caller's ranges inside a finished span (checked if asked)."""
        if entry.done:
            return
        entry.done = True
        data = bytes(entry.buf)
        entry.buf = bytearray()
        for i in entry.members:
            w = self._wanted[i]
            piece = data[w.start - entry.span.start : w.end - entry.span.start]
            if self.check is not None and not self.check(i, piece):
                if self.mode != WHOLE and self._refetch_left[i] > 0:
                    self._refetch_left[i] -= 1
                    self.client.stats.retries += 1
                    self._pending.append(_Entry(w, [i]))
                    continue
                raise RegistryDigestError(
                    f"blob {self.digest}: bytes {w} failed verification"
                    + ("" if self.mode == WHOLE else f" {self.options.refetch + 1} times")
                    + " (the blob's digest "
                    + (
                        "matched, so its index is wrong)"
                        if self.mode == WHOLE
                        else "was not checked)"
                    )
                )
            await self._queue.put(RangeResult(i, w.start, piece))

    # -- the whole-blob path --
    async def _go_whole(self, resp: aiohttp.ClientResponse | None) -> None:
        """Download the blob once (from ``resp`` if it is a 200) and serve ranges from it."""
        if resp is not None and self._whole_lock.locked():
            resp.close()  # someone is already downloading it: never twice
            resp = None
        async with self._whole_lock:
            if self.mode == WHOLE:
                if resp is not None:
                    resp.close()
                return
            me = asyncio.current_task()
            for t in self._round:
                if t is not me:
                    t.cancel()  # their bytes will come from the spool
            self.client.stats.fallbacks += 1
            fd, name = tempfile.mkstemp(prefix=".chunkah-blob-", dir=self.spool_dir)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    await self.client.download_blob(
                        self.ref, self.digest, f, size=self.size, first_response=resp
                    )
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            self.spool = path
            self.mode = WHOLE

    async def _serve_spool(self, todo: list[_Entry]) -> None:
        assert self.spool is not None
        with self.spool.open("rb") as f:
            for entry in todo:
                entry.buf = bytearray(os.pread(f.fileno(), entry.span.length, entry.span.start))
                if len(entry.buf) != entry.span.length:
                    raise RegistryDigestError(
                        f"blob {self.digest}: range {entry.span} lies beyond the downloaded blob"
                    )
                await self._complete(entry)
