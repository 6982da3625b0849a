"""Read a stream ahead in a thread, so its producer overlaps with its consumer.

A layer stream is blob read + digest + gunzip/zstd + diff_id digest, all of which
release the GIL; the tar parser that consumes it is pure Python.  Reading ahead in
one thread runs the two on different cores.  Memory is bounded by ``depth`` blocks;
an exception raised by the source (a digest mismatch at EOF, a corrupt stream) is
raised again by the reader, at the position it happened.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["read_ahead"]

_EOF = b""


class _ReadAheadRaw(io.RawIOBase):
    def __init__(self, source: BinaryIO, block: int, depth: int) -> None:
        self._source = source
        self._block = block
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._run, name="chunkah-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._block)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        if not self._pending:
            if self._done:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return 0
            self._pending = memoryview(item)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
        super().close()


@contextlib.contextmanager
def read_ahead(source: BinaryIO, *, block: int = 1 << 20, depth: int = 8) -> Iterator[BinaryIO]:
    """``source`` read by a thread up to ``depth`` blocks of ``block`` bytes ahead.

    The context stops the thread on exit; ``source`` stays open (the caller owns it).
    """
    raw = _ReadAheadRaw(source, block, depth)
    try:
        yield cast(BinaryIO, io.BufferedReader(raw, block))
    finally:
        raw.close()
