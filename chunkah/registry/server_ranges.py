"""HTTP ``Range`` requests for the embedded registry, as pure functions (no I/O).

:func:`parse_range` turns a ``Range`` header into the byte ranges to send (RFC 9110
section 14): syntax errors and other units mean "ignore the header" (``None``, the
server answers 200 with the whole blob); no satisfiable range, or more ranges than
the server accepts, raise :class:`RangeNotSatisfiableError` (416).  Overlapping
ranges are coalesced, so a request can never make the server send more bytes than
the blob holds; other ranges are served one part each, in the order asked.  :class:`MultipartPlan` lays out a
``multipart/byteranges`` body so its exact length is known before the first byte.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

__all__ = [
    "MAX_RANGES",
    "ByteRange",
    "MultipartPlan",
    "RangeNotSatisfiableError",
    "if_range_allows",
    "parse_range",
]

#: Ranges accepted in one request (zstd:chunked asks for at most 1024 at a time).
MAX_RANGES = 1024

_SPEC_RE = re.compile(r"^(\d*)-(\d*)$")
_UNIT_RE = re.compile(r"^\s*bytes\s*=(.*)$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, order=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as in ``Content-Range``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiableError(Exception):
    """The request's ranges cannot be served: answer 416 with ``bytes */size``."""


def parse_range(header: str, size: int, *, max_ranges: int = MAX_RANGES) -> list[ByteRange] | None:
    """The ranges of ``header`` for a representation of ``size`` bytes.

    Returns ``None`` when the header must be ignored (not ``bytes=``, or invalid
    syntax: RFC 9110 lets a server ignore it and send 200).  Otherwise returns the
    satisfiable ranges clamped to the blob, in the request's order; only when some
    overlap are they sorted and the overlapping ones merged.
    """
    m = _UNIT_RE.match(header)
    if m is None:
        return None
    specs = [s.strip() for s in m.group(1).split(",")]
    specs = [s for s in specs if s]  # RFC 9110 list syntax allows empty elements
    if not specs:
        return None
    if len(specs) > max_ranges:
        raise RangeNotSatisfiableError(
            f"{len(specs)} ranges in one request; at most {max_ranges} are served"
        )
    wanted: list[ByteRange] = []
    for spec in specs:
        sm = _SPEC_RE.match(spec)
        if sm is None:
            return None
        first, last = sm.group(1), sm.group(2)
        if first:
            start = int(first)
            if last:
                end = int(last)
                if end < start:
                    return None  # invalid range-spec: ignore the whole header
            else:
                end = size - 1
            if start >= size:
                continue  # unsatisfiable; others may still be
            wanted.append(ByteRange(start, min(end, size - 1)))
        elif last:
            suffix = int(last)
            if suffix == 0 or size == 0:
                continue
            wanted.append(ByteRange(max(0, size - suffix), size - 1))
        else:
            return None  # "-" alone
    if not wanted:
        raise RangeNotSatisfiableError(f"no requested range lies within the {size}-byte blob")
    return _coalesce(wanted)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Merge overlapping ranges; leave everything else exactly as requested.

    Adjacent ranges are *not* merged and the request's order is kept: clients such
    as containers/storage match the parts of a multipart answer to their ranges one
    by one (RFC 9110 allows coalescing, real clients break on it).  Overlaps never
    occur in such requests; merging them (sorted) caps the body at the blob's size.
    """
    ordered = sorted(ranges)
    if all(a.end < b.start for a, b in itertools.pairwise(ordered)):
        return ranges
    out: list[ByteRange] = [ordered[0]]
    for r in ordered[1:]:
        last = out[-1]
        if r.start <= last.end:
            out[-1] = ByteRange(last.start, max(last.end, r.end))
        else:
            out.append(r)
    return out


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether an ``If-Range`` precondition lets the ``Range`` header apply.

    Only a strong match with our ETag does; a date or a weak tag never matches
    (we send no ``Last-Modified``), so the client gets the whole blob instead.
    """
    if if_range is None:
        return True
    return if_range.strip() == etag


@dataclass(frozen=True)
class MultipartPlan:
    """The framing of a ``multipart/byteranges`` body: parts and their exact length.

    The body is ``head(0) data(0) head(1) data(1) ... tail``; heads carry the
    boundary line and the part's ``Content-Type`` and ``Content-Range``.
    """

    ranges: tuple[ByteRange, ...]
    size: int
    boundary: str
    part_type: str = "application/octet-stream"

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"

    def head(self, i: int) -> bytes:
        lead = "" if i == 0 else "\r\n"
        r = self.ranges[i]
        return (
            f"{lead}--{self.boundary}\r\n"
            f"Content-Type: {self.part_type}\r\n"
            f"Content-Range: {r.content_range(self.size)}\r\n\r\n"
        ).encode("ascii")

    @property
    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_length(self) -> int:
        heads = sum(len(self.head(i)) for i in range(len(self.ranges)))
        return heads + sum(r.length for r in self.ranges) + len(self.tail)
