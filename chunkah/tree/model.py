"""The filesystem tree model: one value per path, content referenced, never loaded.

Paths are ``bytes`` relative to the tree root, '/'-separated, without a leading
'/' or './' and without a trailing '/'. The root directory itself is ``b""``.
Canonical order sorts paths by their list of components, so a directory comes
before everything below it (the same order as GNU ``tar --sort=name``).
"""

from __future__ import annotations

import abc
import enum
import io
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, cast

from chunkah.tree.errors import TreeError, show_path

__all__ = [
    "Content",
    "EmptyContent",
    "Entry",
    "EntryType",
    "FileContent",
    "MemoryContent",
    "RangeContent",
    "SpooledContent",
    "Tree",
    "filter_xattrs",
    "keep_xattr",
    "normalize_path",
    "path_sort_key",
]


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


# --- xattr policy (the one place that decides) -------------------------------

_KEEP_XATTRS = frozenset(
    {"security.capability", "system.posix_acl_access", "system.posix_acl_default"}
)
_KEEP_XATTR_PREFIXES = ("user.",)


def keep_xattr(name: str) -> bool:
    """True when an xattr belongs in an image.

    Kept: file capabilities, POSIX ACLs and ``user.*``. Dropped: ``security.selinux``
    (labels are the host policy's job), ``trusted.*`` (overlayfs and other private
    state) and everything else, because it is host-specific.
    """
    return name in _KEEP_XATTRS or name.startswith(_KEEP_XATTR_PREFIXES)


def filter_xattrs(items: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """Apply :func:`keep_xattr` and return the kept pairs sorted by name."""
    return tuple(sorted((k, bytes(v)) for k, v in items if keep_xattr(k)))


# --- paths --------------------------------------------------------------------


def normalize_path(raw: bytes | str) -> bytes:
    """Turn an archive or user path into the model's form.

    Strips leading '/' and './', trailing '/', empty and '.' components. Leaves
    '..' components alone; readers that must refuse them check separately.
    """
    if isinstance(raw, str):
        raw = os.fsencode(raw)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    return b"/".join(parts)


def path_sort_key(path: bytes) -> bytes:
    """Canonical order: compare component lists, so parents sort before children.

    Replacing '/' by NUL (which no name contains, and which sorts below every other
    byte) gives exactly the component-list order as one cheap bytes comparison.
    """
    return path.replace(b"/", b"\x00")


def parent_of(path: bytes) -> bytes:
    """The parent path (``b""`` for top-level entries)."""
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""


def is_below(path: bytes, ancestor: bytes) -> bool:
    """True when ``path`` is strictly below ``ancestor``."""
    if ancestor == b"":
        return path != b""
    return path.startswith(ancestor + b"/")


# --- content sources ----------------------------------------------------------


class Content(abc.ABC):
    """Where a regular file's bytes come from. Opened on demand, read in blocks."""

    __slots__ = ()  # subclasses are slotted dataclasses: large trees stay small
    size: int

    @abc.abstractmethod
    def open(self) -> BinaryIO:
        """A fresh binary reader positioned at the first byte of the content."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Human-readable source, for error messages."""


@dataclass(frozen=True, slots=True)
class FileContent(Content):
    """A file on disk, opened with O_NOFOLLOW so a swapped-in symlink is refused."""

    path: bytes
    size: int

    def open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb", buffering=0)

    def describe(self) -> str:
        return show_path(self.path)


@dataclass(frozen=True, slots=True)
class RangeContent(Content):
    """``size`` bytes at ``offset`` of an uncompressed file (e.g. a member of a tar file)."""

    path: bytes
    offset: int
    size: int

    def open(self) -> BinaryIO:
        return cast(BinaryIO, _RangeReader(self.path, self.offset, self.size))

    def describe(self) -> str:
        return f"{show_path(self.path)}@{self.offset}+{self.size}"


@dataclass(frozen=True, slots=True)
class EmptyContent(Content):
    """Zero bytes; saves spooling a file for every empty member of a stream."""

    size: int = 0

    def open(self) -> BinaryIO:
        return io.BytesIO(b"")

    def describe(self) -> str:
        return "empty"


@dataclass(frozen=True, eq=False)
class MemoryContent(Content):
    """A small file's bytes, kept in memory by a reader under a fixed budget.

    The one exception to "no content in memory": spooling thousands of tiny files to
    disk costs more than the files themselves; readers cap the total (see
    tar_reader.MEMORY_SPOOL_BUDGET), so memory stays bounded.
    """

    data: bytes
    size: int

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def describe(self) -> str:
        return f"{self.size} bytes in memory"


@dataclass(frozen=True, slots=True)
class SpooledContent(FileContent):
    """A copy in a spool directory, made while reading a non-seekable stream.

    The spool directory belongs to the caller; it must outlive the tree.
    """


class _RangeReader(io.RawIOBase):
    """Read-only window onto a file, read with pread so no shared file offset."""

    def __init__(self, path: bytes, offset: int, size: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        mv = memoryview(buf).cast("B")
        left = self._end - self._pos
        if len(mv) > left:
            mv = mv[:left]
        if not len(mv):
            return 0
        n = os.preadv(self._fd, [mv], self._pos)
        self._pos += n
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


# --- entries and trees -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a tree. Equality ignores where the content comes from."""

    path: bytes
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link_target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    content: Content | None = field(default=None, compare=False, repr=False)
    hardlink_group: bytes | None = None

    def __post_init__(self) -> None:
        if self.mode & ~0o7777:
            raise ValueError(f"{show_path(self.path)}: mode {self.mode:o} has bits beyond 0o7777")
        if self.type is EntryType.FILE:
            if self.content is not None and self.content.size != self.size:
                raise ValueError(f"{show_path(self.path)}: content size differs from entry size")
        elif self.size:
            raise ValueError(f"{show_path(self.path)}: only regular files have a size")
        if self.hardlink_group is not None and self.type is not EntryType.FILE:
            raise ValueError(f"{show_path(self.path)}: only regular files can be hardlinked")

    @property
    def sort_key(self) -> bytes:
        return path_sort_key(self.path)

    def stat_mode(self) -> int:
        """The full st_mode (type bits | permission bits)."""
        return _S_IFMT[self.type] | self.mode


_S_IFMT = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


class Tree:
    """A path -> :class:`Entry` mapping iterated in canonical order.

    Parents are not required to exist (tar streams often omit them); writers emit
    what is there. Hardlink groups are entries sharing a ``hardlink_group`` key;
    readers call :meth:`canonicalize_hardlinks` so equal trees compare equal.
    """

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[bytes, Entry] = {}
        self._order: list[bytes] | None = None
        for e in entries:
            self.add(e)

    # mapping-ish API
    def add(self, entry: Entry) -> None:
        """Add or replace the entry at ``entry.path``."""
        if entry.path != normalize_path(entry.path):
            raise TreeError(f"{show_path(entry.path)}: path is not in normalized form")
        if entry.path not in self._entries:
            self._order = None
        self._entries[entry.path] = entry

    def remove(self, path: bytes) -> Entry:
        """Remove one path (not its children) and return its entry."""
        self._order = None
        return self._entries.pop(path)

    def remove_subtree(self, path: bytes, *, keep_root: bool = False) -> int:
        """Remove ``path`` and everything below it; returns how many entries went."""
        doomed = [p for p in self._entries if is_below(p, path)]
        if not keep_root and path in self._entries:
            doomed.append(path)
        for p in doomed:
            del self._entries[p]
        if doomed:
            self._order = None
        return len(doomed)

    def get(self, path: bytes) -> Entry | None:
        return self._entries.get(path)

    def __getitem__(self, path: bytes) -> Entry:
        return self._entries[path]

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[bytes]:
        """All paths in canonical order."""
        if self._order is None:
            self._order = sorted(self._entries, key=path_sort_key)
        return list(self._order)

    def __iter__(self) -> Iterator[Entry]:
        """Entries in canonical order."""
        for p in self.paths():
            yield self._entries[p]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Tree({len(self._entries)} entries)"

    # hardlinks
    def hardlink_groups(self) -> dict[bytes, list[bytes]]:
        """Group key -> member paths in canonical order."""
        groups: dict[bytes, list[bytes]] = {}
        for p in self.paths():
            key = self._entries[p].hardlink_group
            if key is not None:
                groups.setdefault(key, []).append(p)
        return groups

    def canonicalize_hardlinks(self) -> None:
        """Rename each group to its first member in canonical order; drop singletons."""
        for key, members in self.hardlink_groups().items():
            new_key: bytes | None = members[0] if len(members) > 1 else None
            if new_key == key:
                continue
            for p in members:
                self._entries[p] = replace(self._entries[p], hardlink_group=new_key)

    def total_size(self) -> int:
        """Bytes of regular-file content, counting each hardlink group once."""
        seen: set[bytes] = set()
        total = 0
        for e in self._entries.values():
            if e.type is EntryType.FILE:
                if e.hardlink_group is not None:
                    if e.hardlink_group in seen:
                        continue
                    seen.add(e.hardlink_group)
                total += e.size
        return total
