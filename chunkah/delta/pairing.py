"""Which old file each changed file of a new image is a delta against (pure).

A security update replaces whole files, often under new names: the kernel's module
directory ``usr/lib/modules/<version>/`` moves with every ABI bump, shared objects
carry their version in the name (``libssl.so.3``, ``libc-2.36.so``), and wheels
vendor libraries under hashed names (``numpy.libs/libscipy_openblas64_-fdde5778.so``).
Files are paired, in this order:

1. **path**: the same path in the old image (its content changed);
2. **renamed**: the same path after :func:`normalize_path` (versions and hashes
   replaced by placeholders), within the same package when both sides know it;
3. **similar**: the same :func:`similarity_key` (the file name with every digit and
   hash taken out) and a size within a factor of :data:`SIMILAR_SIZE_RATIO`.

Ties go to the same package, then the same file name, then the closest size.
Only files whose content the old image does not have are paired: the host already
has the others and copies them locally.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "SIMILAR_SIZE_RATIO",
    "FileInfo",
    "Pair",
    "normalize_path",
    "pair_files",
    "similarity_key",
]

SIMILAR_SIZE_RATIO = 1.5  # "similar" pairs only between files at most this far apart in size

# A hash suffix of a vendored library (auditwheel: libfoo-1a2b3c4d.so.5): 8+ hex
# digits with at least one digit, after '-' and before '.', '-' or the end.
_HASH = re.compile(rb"-(?=[0-9a-f]*[0-9])[0-9a-f]{8,}(?=[.\-]|$)")
# A dotted version (2.4.0, 6.1.0-50, 3.0.17-1~deb12u2) not glued to a letter before it.
_VERSION = re.compile(rb"(?<![0-9A-Za-z])\d+(?:\.\d+)+(?:[-~+][0-9a-z]*\d[0-9a-z]*)*")
# The soname version of a shared object: libssl.so.3, libz.so.1.2.13
_SO_VERSION = re.compile(rb"\.so(?:\.\d+)+$")
_DIGITS = re.compile(rb"\d+")
_HEX = re.compile(rb"(?=[0-9a-f]*[0-9])[0-9a-f]{8,}")


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A regular file of an image, as pairing sees it."""

    path: bytes
    sha256: bytes
    size: int
    package: str | None = None  # owning package, when the image's database says


@dataclass(frozen=True, slots=True)
class Pair:
    new: FileInfo
    old: FileInfo
    how: str  # "path", "renamed" or "similar"


def _normalize_component(name: bytes) -> bytes:
    name = _HASH.sub(b"-#", name)
    name = _SO_VERSION.sub(b".so.@", name)
    return _VERSION.sub(b"@", name)


def normalize_path(path: bytes) -> bytes:
    """The path with version numbers and library hashes replaced by placeholders.

    ``usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko`` and the same module
    under ``6.1.0-56-amd64`` normalise alike; so do ``libfoo.so.1.2`` and
    ``libfoo.so.1.3``, and ``numpy.libs/libscipy_openblas64_-fdde5778.so`` and
    ``...-32a4b2a6.so``.
    """
    return b"/".join(_normalize_component(c) for c in path.split(b"/"))


def similarity_key(path: bytes) -> bytes:
    """The file name without hashes and digits (the last resort of pairing)."""
    base = path.rpartition(b"/")[2]
    return _DIGITS.sub(b"", _HEX.sub(b"", base))


def _basename(path: bytes) -> bytes:
    return path.rpartition(b"/")[2]


def _package(f: FileInfo) -> str | None:
    """The package name with its version taken out: Debian names kernel packages
    ``linux-image-6.1.0-50-amd64``, and the ABI bump renames the package too."""
    if f.package is None:
        return None
    return _normalize_component(f.package.encode()).decode("utf-8", "replace")


def _best(new: FileInfo, candidates: Iterable[FileInfo]) -> FileInfo | None:
    def rank(old: FileInfo) -> tuple[int, int, int, bytes]:
        same_package = new.package is not None and _package(old) == _package(new)
        return (
            0 if same_package else 1,
            0 if _basename(old.path) == _basename(new.path) else 1,
            abs(old.size - new.size),
            old.path,
        )

    return min(candidates, key=rank, default=None)


def _compatible(new: FileInfo, old: FileInfo) -> bool:
    """Different known packages never pair (a file moved between packages does)."""
    return new.package is None or old.package is None or _package(new) == _package(old)


def pair_files(
    old: Sequence[FileInfo],
    new: Sequence[FileInfo],
    *,
    similar: bool = True,
) -> list[Pair]:
    """A base in ``old`` for every file of ``new`` whose content ``old`` lacks.

    Files without a plausible base are left out (they come as chunks).  The result
    is in the order of ``new``.
    """
    have = {f.sha256 for f in old}
    by_path: Mapping[bytes, FileInfo] = {f.path: f for f in old if f.size > 0}
    by_norm: dict[bytes, list[FileInfo]] = defaultdict(list)
    by_similar: dict[bytes, list[FileInfo]] = defaultdict(list)
    for f in old:
        if f.size == 0:
            continue
        by_norm[normalize_path(f.path)].append(f)
        if similar:
            by_similar[similarity_key(f.path)].append(f)
    pairs: list[Pair] = []
    for f in new:
        if f.size == 0 or f.sha256 in have:
            continue
        same = by_path.get(f.path)
        if same is not None:
            pairs.append(Pair(f, same, "path"))
            continue
        renamed = _best(
            f, (o for o in by_norm.get(normalize_path(f.path), ()) if _compatible(f, o))
        )
        if renamed is not None:
            pairs.append(Pair(f, renamed, "renamed"))
            continue
        if not similar:
            continue
        lo, hi = f.size / SIMILAR_SIZE_RATIO, f.size * SIMILAR_SIZE_RATIO
        near = _best(
            f,
            (
                o
                for o in by_similar.get(similarity_key(f.path), ())
                if lo <= o.size <= hi and _compatible(f, o)
            ),
        )
        if near is not None:
            pairs.append(Pair(f, near, "similar"))
    return pairs
