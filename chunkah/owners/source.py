"""The interface every package-database source implements, and helpers they share."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from typing import Protocol

from chunkah.owners.canon import PathCanonicalizer
from chunkah.owners.errors import DatabaseError
from chunkah.owners.model import Claim
from chunkah.tree.model import EntryType, Tree

__all__ = [
    "MAX_DB_FILE",
    "OwnershipSource",
    "os_release",
    "read_tree_file",
    "read_tree_gzip_head",
]

# Database files are read whole; anything larger is not a database we understand.
MAX_DB_FILE = 1 << 30


class OwnershipSource(Protocol):
    """One package database (or other record of ownership) inside a tree.

    ``kind`` names the source (``"dpkg"``) and prefixes its component names.
    ``detect`` is cheap and decides whether ``claim`` runs at all. ``claim``
    reads the database *from the tree* (never the host) and yields one
    :class:`Claim` per path it records, canonicalised with ``canon``; paths
    that are absent from the tree are yielded too (they feed re-claiming by
    digest). Corrupt input raises :class:`DatabaseError`.
    """

    kind: str

    def detect(self, tree: Tree) -> bool: ...

    def claim(
        self, tree: Tree, canon: PathCanonicalizer, *, build_epoch: int
    ) -> Iterable[Claim]: ...


def read_tree_file(
    tree: Tree, canon: PathCanonicalizer, path: bytes, *, limit: int = MAX_DB_FILE
) -> bytes | None:
    """The bytes of the regular file at ``path`` (symlinks resolved in the tree), or None."""
    entry = tree.get(canon.resolve(path))
    if entry is None or entry.type is not EntryType.FILE or entry.content is None:
        return None
    if entry.size > limit:
        raise DatabaseError(path, f"is {entry.size} bytes, more than the {limit} we read")
    try:
        with entry.content.open() as f:
            return f.read()
    except OSError as exc:
        raise DatabaseError(path, f"cannot be read: {exc.strerror or exc}") from exc


def read_tree_gzip_head(
    tree: Tree, canon: PathCanonicalizer, path: bytes, *, limit: int = 1 << 20
) -> bytes | None:
    """Up to ``limit`` decompressed bytes of a gzip file in the tree, or None.

    Damaged or truncated files give what could be decompressed: these are
    documentation files, not databases, and must never stop a build.
    """
    raw = read_tree_file(tree, canon, path, limit=64 << 20)
    if raw is None:
        return None
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        return d.decompress(raw, limit)
    except (zlib.error, gzip.BadGzipFile, EOFError):
        return None


def os_release(tree: Tree, canon: PathCanonicalizer) -> dict[str, str]:
    """The fields of the tree's ``etc/os-release`` (or ``usr/lib/os-release``); {} if none.

    Package URLs take their namespace (``ID``) and distro (``VERSION_CODENAME``)
    from it.
    """
    for p in (b"etc/os-release", b"usr/lib/os-release"):
        try:
            data = read_tree_file(tree, canon, p, limit=1 << 16)
        except DatabaseError:
            continue
        if data is None:
            continue
        vals: dict[str, str] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            k, sep, v = line.partition("=")
            if sep:
                vals[k.strip()] = v.strip().strip("\"'")
        return vals
    return {}
