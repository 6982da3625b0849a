"""chunkah.readahead: same bytes as the source, errors where they happened, bounded."""

from __future__ import annotations

import io
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkah.errors import VerificationError
from chunkah.readahead import read_ahead


class _FailsAtEof(io.RawIOBase):
    """Serves ``data`` in small pieces, then raises as a digest check at EOF would."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if not self._data:
            raise VerificationError("digest mismatch at EOF")
        n = min(len(b), len(self._data), 1000)
        b[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@settings(max_examples=30, deadline=None)
@given(
    data=st.binary(max_size=50_000),
    block=st.integers(1, 5000),
    depth=st.integers(1, 4),
    reads=st.lists(st.integers(-1, 9000), min_size=1, max_size=20),
)
def test_same_bytes_whatever_the_read_sizes(
    data: bytes, block: int, depth: int, reads: list[int]
) -> None:
    out = bytearray()
    with read_ahead(io.BytesIO(data), block=block, depth=depth) as f:
        for n in reads:
            out += f.read(n)
        out += f.read()
        assert f.read(10) == b""
    assert bytes(out) == data


def test_source_error_is_raised_after_the_bytes_before_it() -> None:
    data = bytes(range(256)) * 40
    with read_ahead(_FailsAtEof(data), block=4096) as f:  # type: ignore[arg-type]
        got = f.read(len(data))
        assert got == data
        with pytest.raises(VerificationError, match="digest mismatch"):
            f.read(1)


def test_leaving_early_stops_the_thread_with_the_queue_full() -> None:
    before = threading.active_count()
    with read_ahead(io.BytesIO(bytes(10 << 20)), block=1 << 10, depth=2) as f:
        assert f.read(10) == bytes(10)
    assert threading.active_count() == before
