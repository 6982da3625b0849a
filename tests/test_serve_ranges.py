"""Unit tests of the embedded registry's pure Range logic (chunkah.registry.server_ranges)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkah.registry.server_ranges import (
    ByteRange,
    MultipartPlan,
    RangeNotSatisfiableError,
    if_range_allows,
    parse_range,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, [(0, 0)]),
        ("bytes=0-9", 10, [(0, 9)]),
        ("bytes=2-100", 10, [(2, 9)]),  # end clamped
        ("bytes=5-", 10, [(5, 9)]),
        ("bytes=-3", 10, [(7, 9)]),
        ("bytes=-30", 10, [(0, 9)]),  # suffix longer than the blob
        ("BYTES = 1-2", 10, [(1, 2)]),  # unit is case-insensitive, OWS allowed
        ("bytes=1-2, 4-5", 10, [(1, 2), (4, 5)]),
        ("bytes=1-2,,4-5,", 10, [(1, 2), (4, 5)]),  # empty list elements
        ("bytes=0-4,3-6", 10, [(0, 6)]),  # overlap merged
        ("bytes=0-4,5-6", 10, [(0, 4), (5, 6)]),  # adjacent: kept (containers/storage)
        ("bytes=0-1,0-1,0-1", 10, [(0, 1)]),
        ("bytes=6-7,0-1", 10, [(6, 7), (0, 1)]),  # request order kept
        ("bytes=6-7,0-3,2-4", 10, [(0, 4), (6, 7)]),  # overlaps: sorted and merged
        ("bytes=0-1,20-30", 10, [(0, 1)]),  # unsatisfiable parts dropped
        ("bytes=0-", 10, [(0, 9)]),
    ],
)
def test_parse_range(header: str, size: int, expected: list[tuple[int, int]]) -> None:
    got = parse_range(header, size)
    assert got is not None
    assert [(r.start, r.end) for r in got] == expected


@pytest.mark.parametrize(
    "header",
    ["items=0-1", "bytes=", "bytes=a-b", "bytes=5-2", "bytes=-", "bytes=1-2-3", "bytes 0-1", "0-1"],
)
def test_invalid_range_is_ignored(header: str) -> None:
    assert parse_range(header, 10) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


def test_too_many_ranges() -> None:
    header = "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(1025))
    with pytest.raises(RangeNotSatisfiableError, match="at most 1024"):
        parse_range(header, 10_000)
    ok = "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(1024))
    assert len(parse_range(ok, 10_000) or []) == 1024


def test_if_range() -> None:
    etag = '"sha256:abc"'
    assert if_range_allows(None, etag)
    assert if_range_allows('"sha256:abc"', etag)
    assert not if_range_allows('W/"sha256:abc"', etag)
    assert not if_range_allows('"sha256:def"', etag)
    assert not if_range_allows("Wed, 21 Oct 2015 07:28:00 GMT", etag)


def test_multipart_plan_length_matches_body() -> None:
    data = bytes(range(256)) * 4
    plan = MultipartPlan((ByteRange(0, 9), ByteRange(100, 100), ByteRange(1000, 1023)), 1024, "b0")
    body = b"".join(plan.head(i) + data[r.start : r.end + 1] for i, r in enumerate(plan.ranges))
    body += plan.tail
    assert len(body) == plan.content_length
    assert body.startswith(b"--b0\r\nContent-Type: application/octet-stream\r\n")
    assert b"Content-Range: bytes 100-100/1024\r\n\r\n" in body
    assert body.endswith(b"\r\n--b0--\r\n")
    assert plan.content_type == "multipart/byteranges; boundary=b0"


_spec = st.one_of(
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: f"{min(t)}-{max(t)}"),
    st.integers(0, 300).map(lambda a: f"{a}-"),
    st.integers(1, 300).map(lambda n: f"-{n}"),
)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(0, 256), specs=st.lists(_spec, min_size=1, max_size=20))
def test_ranges_cover_exactly_what_was_asked(size: int, specs: list[str]) -> None:
    wanted: set[int] = set()
    for spec in specs:
        a, b = spec.split("-")
        if a == "":
            n = int(b)
            wanted.update(range(max(0, size - n), size))
        else:
            end = size - 1 if b == "" else min(int(b), size - 1)
            wanted.update(range(int(a), end + 1))
    header = "bytes=" + ",".join(specs)
    if not wanted:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(header, size)
        return
    got = parse_range(header, size)
    assert got is not None
    covered: set[int] = set()
    for r in got:
        assert 0 <= r.start <= r.end < size
        covered.update(range(r.start, r.end + 1))
    assert covered == wanted
    # Disjoint: never more bytes than the blob holds.
    ordered = sorted(got)
    for a, b in itertools.pairwise(ordered):
        assert a.end < b.start
    assert sum(r.length for r in got) <= size
    # Without overlaps in the request, exactly the requested ranges in their order.
    clamped = []
    for spec in specs:
        a, b = spec.split("-")
        if a == "":
            if int(b) > 0 and size > 0:
                clamped.append((max(0, size - int(b)), size - 1))
        elif int(a) < size:
            clamped.append((int(a), size - 1 if b == "" else min(int(b), size - 1)))
    srt = sorted(clamped)
    if all(x[1] < y[0] for x, y in itertools.pairwise(srt)):
        assert [(r.start, r.end) for r in got] == clamped
