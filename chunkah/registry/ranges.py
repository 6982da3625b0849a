"""Byte ranges on the wire, without a network: planning, headers, and parsing answers.

- :func:`merge_ranges` turns the ranges a caller wants into sorted, disjoint *spans*,
  merging overlaps and gaps of at most ``max_gap`` bytes (one span costs ~20 header
  bytes and a multipart part header; a small gap is cheaper to download than to skip).
- :func:`plan_requests` packs spans into requests of at most ``max_ranges`` spans and
  at most ``max_header_bytes`` of ``Range:`` header line (nginx refuses header lines
  above 8 KiB with 400; Apache answers 200 above 200 ranges).
- :func:`parse_content_range` and :class:`MultipartByteRangesParser` check an answer
  strictly against what was asked: every part's ``Content-Range`` must be one of the
  requested spans, each at most once, with exactly its length of bytes.

Spans are half-open ``[start, end)``; on the wire ranges are inclusive (``a-b``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "RANGE_LINE_OVERHEAD",
    "ContentRange",
    "MultipartByteRangesParser",
    "MultipartError",
    "RangePiece",
    "Span",
    "halve",
    "merge_ranges",
    "multipart_boundary",
    "parse_content_range",
    "plan_requests",
    "range_header",
    "validate_ranges",
]

#: ``Range: `` plus ``bytes=`` plus CRLF: what a header line costs besides the spans.
RANGE_LINE_OVERHEAD = len("Range: bytes=") + 2


class MultipartError(ValueError):
    """A ``multipart/byteranges`` body (or a ``Content-Range``) is not what was asked for."""


@dataclass(frozen=True, order=True)
class Span:
    """A half-open byte range ``[start, end)`` of a blob."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def spec(self) -> str:
        """The inclusive form used in ``Range`` and ``Content-Range``: ``a-b``."""
        return f"{self.start}-{self.end - 1}"

    def __str__(self) -> str:
        return self.spec


def validate_ranges(ranges: Iterable[tuple[int, int]], size: int | None) -> list[Span]:
    """``(offset, length)`` pairs as spans, checked: non-negative, non-empty, within ``size``."""
    out = []
    for offset, length in ranges:
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length <= 0:
            raise ValueError(f"invalid byte range (offset={offset!r}, length={length!r})")
        if size is not None and offset + length > size:
            raise ValueError(
                f"byte range {offset}-{offset + length - 1} lies beyond the blob's {size} bytes"
            )
        out.append(Span(offset, offset + length))
    return out


def merge_ranges(spans: Iterable[Span], *, max_gap: int = 0) -> list[Span]:
    """Sorted, disjoint spans covering ``spans``; gaps of at most ``max_gap`` bytes merge.

    Overlapping and touching spans always merge: servers such as Go's ``ServeContent``
    answer 200 with the whole body when the ranges add up to more than the blob.
    """
    out: list[Span] = []
    for s in sorted(spans):
        if out and s.start - out[-1].end <= max_gap:
            if s.end > out[-1].end:
                out[-1] = Span(out[-1].start, s.end)
        else:
            out.append(s)
    return out


def range_header(spans: Sequence[Span]) -> str:
    """The ``Range`` header value for ``spans``: ``bytes=a-b,c-d``."""
    return "bytes=" + ",".join(s.spec for s in spans)


def plan_requests(
    spans: Sequence[Span], *, max_ranges: int, max_header_bytes: int
) -> list[tuple[Span, ...]]:
    """Pack ``spans`` (in order) into requests within both limits.

    ``max_header_bytes`` bounds the whole ``Range: bytes=...`` line including CRLF.
    A span never splits; one span always fits (its line is < 60 bytes).
    """
    if max_ranges < 1:
        raise ValueError("max_ranges must be at least 1")
    if max_header_bytes < RANGE_LINE_OVERHEAD + 41:
        raise ValueError(f"max_header_bytes {max_header_bytes} is too small for one range")
    out: list[tuple[Span, ...]] = []
    group: list[Span] = []
    line = RANGE_LINE_OVERHEAD
    for s in spans:
        cost = len(s.spec) + (1 if group else 0)
        if group and (len(group) >= max_ranges or line + cost > max_header_bytes):
            out.append(tuple(group))
            group, line, cost = [], RANGE_LINE_OVERHEAD, len(s.spec)
        group.append(s)
        line += cost
    if group:
        out.append(tuple(group))
    return out


def halve(group: Sequence[Span]) -> list[tuple[Span, ...]]:
    """Split a request's spans in two halves (for a server that refused the count)."""
    mid = (len(group) + 1) // 2
    return [tuple(part) for part in (group[:mid], group[mid:]) if part]


@dataclass(frozen=True)
class ContentRange:
    """A parsed ``Content-Range``: ``span`` None means ``bytes */total`` (unsatisfied)."""

    span: Span | None
    total: int | None


_CR_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_CR_UNSAT_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


def parse_content_range(value: str) -> ContentRange:
    """Parse ``bytes a-b/N``, ``bytes a-b/*`` or ``bytes */N`` strictly."""
    m = _CR_RE.match(value)
    if m:
        first, last = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if last < first or (total is not None and last >= total):
            raise MultipartError(f"invalid Content-Range {value!r}")
        return ContentRange(Span(first, last + 1), total)
    m = _CR_UNSAT_RE.match(value)
    if m:
        return ContentRange(None, int(m.group(1)))
    raise MultipartError(f"invalid Content-Range {value!r}")


_BOUNDARY_RE = re.compile(
    r"""(?:^|;)\s*boundary\s*=\s*(?:"((?:[^"\\]|\\.){1,70})"|([^\s;"]{1,70}))\s*(?:;|$)""",
    re.IGNORECASE,
)


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` Content-Type, or None if it is not one."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    m = _BOUNDARY_RE.search(";" + params)
    if not m:
        return None
    if m.group(1) is not None:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return m.group(2)


@dataclass(frozen=True)
class RangePiece:
    """Bytes of one requested span: ``data`` starts ``offset`` bytes into ``span``."""

    span: Span
    offset: int
    data: bytes


_PREAMBLE, _AFTER_DELIM, _HEADERS, _DATA, _AFTER_DATA, _DONE = range(6)


class MultipartByteRangesParser:
    """A streaming, strict parser of a ``multipart/byteranges`` body.

    Feed it the body in pieces; it returns :class:`RangePiece` objects as soon as
    their bytes arrive, holding back only part headers and delimiters.  Each part must
    carry a ``Content-Range`` equal to one of ``expected`` (any order, each at most
    once), total ``total`` when given, and exactly that many bytes followed by the
    next delimiter.  Anything else raises :class:`MultipartError`.  :meth:`close`
    raises if the closing delimiter never came; :attr:`received` lists complete parts.
    """

    def __init__(
        self,
        boundary: str,
        expected: Iterable[Span],
        total: int | None = None,
        *,
        max_part_header: int = 4096,
        max_epilogue: int = 1024,
    ) -> None:
        if not boundary or len(boundary) > 70 or not boundary.isascii():
            raise MultipartError(f"invalid multipart boundary {boundary!r}")
        self._delim = b"--" + boundary.encode("ascii")
        self._expected = set(expected)
        self._total = total
        self._max_part_header = max_part_header
        self._max_epilogue = max_epilogue
        self._state = _PREAMBLE
        self._buf = b""
        self._seen = 0  # bytes consumed from the body so far
        self._skipped = 0  # preamble/epilogue bytes
        self._span: Span | None = None
        self._left = 0
        self.received: list[Span] = []

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[RangePiece]:
        if self._buf:
            data, self._buf = self._buf + data, b""
        out: list[RangePiece] = []
        pos, n = 0, len(data)
        delim = self._delim
        while pos < n:
            state = self._state
            if state == _DATA:
                assert self._span is not None
                take = min(self._left, n - pos)
                offset = self._span.length - self._left
                out.append(RangePiece(self._span, offset, data[pos : pos + take]))
                pos += take
                self._left -= take
                if self._left == 0:
                    self.received.append(self._span)
                    self._state = _AFTER_DATA
            elif state == _AFTER_DATA:
                need = 2 + len(delim)
                if n - pos < need:
                    break
                if data[pos : pos + need] != b"\r\n" + delim:
                    raise MultipartError(
                        f"part {self._span} is not followed by the boundary (longer than "
                        "its Content-Range, or corrupt)"
                    )
                pos += need
                self._state = _AFTER_DELIM
            elif state == _AFTER_DELIM:
                if n - pos < 2:
                    break
                if data[pos : pos + 2] == b"--":
                    pos += 2
                    self._state = _DONE
                    continue
                eol = data.find(b"\r\n", pos, pos + 66)
                if eol < 0:
                    if n - pos >= 66:
                        raise MultipartError("garbage after a multipart boundary")
                    break
                if data[pos:eol].strip(b" \t"):
                    raise MultipartError("garbage after a multipart boundary")
                pos = eol + 2
                self._state = _HEADERS
            elif state == _HEADERS:
                if n - pos < 2:
                    break
                if data[pos : pos + 2] == b"\r\n":
                    raise MultipartError("multipart part without headers (no Content-Range)")
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > self._max_part_header:
                        raise MultipartError("multipart part headers too long")
                    break
                self._start_part(data[pos:end])
                pos = end + 4
            elif state == _PREAMBLE:
                # Only blank lines may precede the first delimiter: a preamble is legal
                # in multipart/mixed, but a byteranges body that has one is not ours.
                while pos < n and data[pos] in b" \t\r\n":
                    pos += 1
                    self._skipped += 1
                if self._skipped > 64:
                    raise MultipartError("no multipart boundary at the start of the body")
                if pos >= n:
                    break
                head = data[pos : pos + len(delim)]
                if not delim.startswith(head):
                    raise MultipartError("the body does not start with the multipart boundary")
                if len(head) < len(delim):
                    break
                pos += len(delim)
                self._state = _AFTER_DELIM
            else:  # _DONE: the epilogue is ignored, up to a limit
                self._skipped += n - pos
                if self._skipped > 64 + self._max_epilogue:
                    raise MultipartError("data after the closing multipart boundary")
                pos = n
        self._seen += pos
        if pos < n:
            self._buf = data[pos:]
        return out

    def _start_part(self, block: bytes) -> None:
        headers: dict[str, str] = {}
        for line in block.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name.strip() or name != name.strip():
                raise MultipartError(f"malformed multipart part header {line[:80]!r}")
            headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
        if "content-range" not in headers:
            raise MultipartError("multipart part without Content-Range")
        cr = parse_content_range(headers["content-range"])
        if cr.span is None:
            raise MultipartError(f"multipart part with unsatisfied range {cr}")
        if self._total is not None and cr.total is not None and cr.total != self._total:
            raise MultipartError(
                f"part {cr.span} says the blob is {cr.total} bytes, expected {self._total}"
            )
        if cr.span not in self._expected:
            raise MultipartError(f"part {cr.span} was not requested (or came twice)")
        if "content-length" in headers and headers["content-length"] != str(cr.span.length):
            raise MultipartError(
                f"part {cr.span}: Content-Length {headers['content-length']} does not match"
            )
        self._expected.discard(cr.span)
        self._span, self._left = cr.span, cr.span.length
        self._state = _DATA

    def close(self) -> None:
        """Check that the body ended with the closing delimiter."""
        if self._state != _DONE:
            what = f"inside part {self._span}" if self._state == _DATA else "before its end"
            raise MultipartError(f"multipart body ended {what} (truncated)")
