"""The /etc three-way merge, as OSTree does it: the administrator's changes win.

Inputs are three *listings* of an /etc tree (path relative to /etc -> what is
there): ``base`` (the old image's pristine /etc), ``local`` (the administrator's
live /etc, which started as a copy of ``base``) and ``new`` (the new image's
pristine /etc).  :func:`merge_etc` is pure: it decides, for every path, whether
the merged /etc takes the entry from ``local`` or from ``new`` (or leaves it
out), and which paths are conflicts.  :func:`scan_listing` is the only I/O here
(it reads a directory into a listing); writing the merged tree is
``chunkah.host.deploy``'s job.

Rules, for every path (``None`` = absent):

- ``local == base``: the administrator did not touch it -> the new image's
  version (which may be absent: deletions follow the image, and so do additions);
- otherwise the administrator changed, added or deleted it -> kept as the
  administrator has it (a deletion stays deleted); if the image changed it too
  (``new != base``) and differently (``new != local``), that is a conflict.

Two structural fix-ups keep the result a tree (every entry's parent is a directory):

- a directory that holds an entry the administrator changed is kept as the
  administrator's directory even if the image removed or replaced it
  (conflict ``dir-kept``);
- an entry the image adds below a directory the administrator removed or replaced
  by a non-directory is left out (conflict ``parent-removed``).

Entries are compared by type, permission bits, owner, content sha256, symlink
target, device number and the xattrs the project keeps; never by mtime.
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chunkah.tree.model import keep_xattr, path_sort_key

__all__ = [
    "EtcConflict",
    "EtcEntry",
    "EtcMerge",
    "Listing",
    "Source",
    "merge_etc",
    "scan_listing",
    "show_etc_path",
]


@dataclass(frozen=True, slots=True)
class EtcEntry:
    """What is compared about one path under /etc (no mtime, no inode)."""

    type: str  # "file" | "dir" | "symlink" | "char" | "block" | "fifo"
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    sha256: bytes | None = None  # files: content digest
    target: bytes | None = None  # symlinks
    rdev: int = 0  # devices
    xattrs: tuple[tuple[str, bytes], ...] = ()  # kept ones, sorted

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


#: path relative to /etc (bytes, no leading "/"; ``b""`` is /etc itself) -> entry
Listing = Mapping[bytes, EtcEntry]


class Source(enum.Enum):
    """Where the merged /etc takes an entry from."""

    LOCAL = "local"  # the administrator's live /etc
    NEW = "new"  # the new image's /etc


@dataclass(frozen=True, slots=True)
class EtcConflict:
    """A path where the merge kept the administrator's choice over the new image's."""

    path: bytes  # relative to /etc
    kind: str  # both-changed | local-deleted | new-deleted | both-added | dir-kept | parent-removed
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": show_etc_path(self.path), "kind": self.kind, "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EtcConflict:
        text = str(obj["path"])
        rel = os.fsencode(text.removeprefix("/etc").lstrip("/"))
        return cls(path=rel, kind=str(obj.get("kind", "")), reason=str(obj.get("reason", "")))


@dataclass(frozen=True)
class EtcMerge:
    """The merge decision: every path of the merged /etc and its source, in canonical order."""

    result: dict[bytes, Source]
    conflicts: tuple[EtcConflict, ...]


_REASONS = {
    "both-changed": "changed by the administrator and by the new image; "
    "kept the administrator's version",
    "both-added": "added by the administrator and by the new image with different contents; "
    "kept the administrator's version",
    "local-deleted": "deleted by the administrator, changed by the new image; kept it deleted",
    "new-deleted": "changed by the administrator, deleted by the new image; "
    "kept the administrator's version",
    "dir-kept": "the new image removes or replaces this directory, which holds entries "
    "the administrator changed; kept the administrator's directory",
    "parent-removed": "the new image adds or changes it below a directory the administrator "
    "removed or replaced; left out",
}


def show_etc_path(rel: bytes) -> str:
    """``/etc/...`` for a path relative to /etc (non-UTF-8 bytes escaped)."""
    text = os.fsdecode(b"/etc/" + rel if rel else b"/etc")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _conflict(path: bytes, kind: str) -> EtcConflict:
    return EtcConflict(path=path, kind=kind, reason=_REASONS[kind])


def _parent(path: bytes) -> bytes:
    i = path.rfind(b"/")
    return path[:i] if i >= 0 else b""


def _ancestors(path: bytes) -> list[bytes]:
    """Proper ancestors of a path, nearest first, ending with the root ``b""``."""
    out = []
    while path:
        path = _parent(path)
        out.append(path)
    return out


def _three_way_kind(b: EtcEntry | None, loc: EtcEntry | None, n: EtcEntry | None) -> str:
    if loc is None:
        return "local-deleted"
    if n is None:
        return "new-deleted"
    if b is None:
        return "both-added"
    return "both-changed"


def merge_etc(base: Listing, local: Listing, new: Listing) -> EtcMerge:
    """Decide the merged /etc from the three listings (pure; see the module docstring).

    For a first deployment pass empty ``base`` and ``local``: everything follows ``new``.
    """
    decided: dict[bytes, Source] = {}
    conflicts: dict[bytes, EtcConflict] = {}
    for path in set(base) | set(local) | set(new):
        b, loc, n = base.get(path), local.get(path), new.get(path)
        if loc == b:
            if n is not None:
                decided[path] = Source.NEW
        else:
            if loc is not None:
                decided[path] = Source.LOCAL
            if n != b and n != loc:
                conflicts[path] = _conflict(path, _three_way_kind(b, loc, n))

    def entry_of(path: bytes) -> EtcEntry | None:
        src = decided.get(path)
        if src is None:
            return None
        return (local if src is Source.LOCAL else new).get(path)

    # Directories holding the administrator's entries stay, as the administrator's.
    for path in [p for p, s in decided.items() if s is Source.LOCAL]:
        for anc in _ancestors(path):
            current = entry_of(anc)
            if current is not None and current.is_dir:
                continue
            mine = local.get(anc)
            if mine is None or not mine.is_dir:
                continue  # local is not a tree; nothing sensible to keep
            decided[anc] = Source.LOCAL
            conflicts.setdefault(anc, _conflict(anc, "dir-kept"))

    # The image's entries below a directory the administrator removed are left out.
    result: dict[bytes, Source] = {}
    for path in sorted(decided, key=path_sort_key):
        parent = _parent(path)
        if parent:  # the root /etc itself is always a directory
            parent_entry = entry_of(parent) if parent in result else None
            if parent_entry is None or not parent_entry.is_dir:
                conflicts.setdefault(path, _conflict(path, "parent-removed"))
                continue
        result[path] = decided[path]
    ordered = tuple(conflicts[p] for p in sorted(conflicts, key=path_sort_key))
    return EtcMerge(result=result, conflicts=ordered)


_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


def _kept_xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in names:
        if keep_xattr(name):
            try:
                out.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(sorted(out))


def _file_sha256(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def entry_from_stat(path: bytes, st: os.stat_result) -> EtcEntry | None:
    """The listing entry for one path (None for sockets and unknown types)."""
    kind = _TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return None
    return EtcEntry(
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        sha256=_file_sha256(path) if kind == "file" else None,
        target=os.readlink(path) if kind == "symlink" else None,
        rdev=st.st_rdev if kind in ("char", "block") else 0,
        xattrs=_kept_xattrs(path) if kind in ("file", "dir") else (),
    )


def scan_listing(root: str | os.PathLike[str] | bytes) -> dict[bytes, EtcEntry]:
    """Read a directory into a listing (never following symlinks; files hashed, streamed).

    A missing root, or a root that is not a real directory (e.g. a symlink), gives {}.
    Sockets are left out, as tar does.
    """
    broot = os.fsencode(root)
    try:
        st = os.lstat(broot)
    except FileNotFoundError:
        return {}
    if not stat.S_ISDIR(st.st_mode):
        return {}
    out: dict[bytes, EtcEntry] = {}
    root_entry = entry_from_stat(broot, st)
    assert root_entry is not None
    out[b""] = root_entry
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(broot, rel_dir) if rel_dir else broot) as it:
            for de in it:
                rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
                full = os.path.join(broot, rel)
                entry = entry_from_stat(full, os.lstat(full))
                if entry is None:
                    continue
                out[rel] = entry
                if entry.is_dir:
                    stack.append(rel)
    return out
