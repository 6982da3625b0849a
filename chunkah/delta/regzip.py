"""Gzip files whose deflate stream GNU gzip reproduces byte for byte.

A gzip file (an initrd, a ``changelog.Debian.gz``) changes completely when a few
bytes of its content change, so a delta of the compressed bytes saves nothing.
When ``gzip -n -LEVEL`` of the decompressed content gives back exactly the same
file, the delta can be taken between the decompressed contents and the host
recompresses (docs/delta.md section 3, encoding 4).  zlib's deflate is not GNU
gzip's, so the host runs the ``gzip`` program; whether its output matches is
checked when the delta is made and again, by sha256, when it is applied.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib

from chunkah.errors import VerificationError

__all__ = ["RAW_MAX", "GzipError", "gunzip_exact", "gzip_level_guess", "regzip"]

#: The largest decompressed content either side may have (host memory: both in RAM).
RAW_MAX = 512 << 20
#: deflate cannot expand content by more than this factor (1032:1 in theory).
_MAX_RATIO = 1100
_TIMEOUT = 600


class GzipError(VerificationError):
    """Not a gzip file this encoding handles, or gzip did not reproduce it."""


def gzip_level_guess(data: bytes) -> int | None:
    """The ``gzip -n`` level that may have made ``data``, from its header; None when
    the header is not what ``gzip -n`` writes (a name, a timestamp, other flags)."""
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08" or data[3] != 0 or data[4:8] != b"\0\0\0\0":
        return None
    xfl = data[8]
    # GNU gzip marks -9 with 2 and -1 with 4; every other level writes 0 and
    # almost every producer uses the default, 6.
    return {2: 9, 4: 1, 0: 6}.get(xfl)


def gunzip_exact(data: bytes, cap: int) -> bytes:
    """The content of a single-member gzip file of at most ``cap`` bytes."""
    cap = min(cap, RAW_MAX, _MAX_RATIO * len(data))
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as exc:
        raise GzipError(f"not a gzip stream: {exc}") from None
    if len(out) > cap:
        raise GzipError(f"gzip content is larger than {cap} bytes")
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise GzipError("gzip stream is truncated or followed by other data")
    return out


def regzip(raw: bytes, level: int) -> bytes:
    """``gzip -n -LEVEL`` of ``raw``, by the gzip program on this machine."""
    if not 1 <= level <= 9:
        raise GzipError(f"gzip level {level} is out of range")
    gzip = shutil.which("gzip")
    if gzip is None:
        raise GzipError("no gzip program on this machine")
    try:
        done = subprocess.run(
            [gzip, "-n", f"-{level}", "-c"],
            input=raw,
            capture_output=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GzipError(f"gzip failed: {exc}") from None
    if done.returncode != 0:
        raise GzipError(f"gzip failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
