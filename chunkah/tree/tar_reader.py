"""Read tar streams (plain, gzip, zstd) and flatten OCI layer stacks into a Tree."""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import os
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, BinaryIO

from chunkah.compression import Compression, CompressionError, detect_compression, open_decompressed
from chunkah.tree.errors import TarFormatError, TreeError, UnsafeEntryError, show_path
from chunkah.tree.model import (
    Content,
    EmptyContent,
    Entry,
    EntryType,
    MemoryContent,
    RangeContent,
    SpooledContent,
    Tree,
    filter_xattrs,
    is_below,
    normalize_path,
    parent_of,
    path_sort_key,
)

__all__ = ["TarSource", "flatten_layers", "iter_tar_members", "read_tar"]

TarSource = str | bytes | os.PathLike[str] | os.PathLike[bytes] | BinaryIO

_BLOCK = 1 << 20
_WHITEOUT_PREFIX = b".wh."
_OPAQUE = b".wh..wh..opq"

TAR_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.GNUTYPE_SPARSE: EntryType.FILE,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


@dataclass(frozen=True)
class TarMember:
    """One logical archive member: an entry, or a hardlink to an earlier path."""

    entry: Entry
    # Set for LNKTYPE members: the normalized path the link points at. ``entry``
    # then carries the link's own header metadata and no content.
    hardlink_to: bytes | None = None


def fs_bytes(name: str) -> bytes:
    # tarfile decoded with utf-8/surrogateescape, so this restores the exact bytes.
    return name.encode("utf-8", "surrogateescape")


def member_path(raw: str) -> bytes:
    raw_b = fs_bytes(raw)
    path = normalize_path(raw_b)
    if b".." in path.split(b"/"):
        raise UnsafeEntryError(raw_b, "path contains a '..' component")
    if b"\0" in path:  # a PAX path may carry one; no filesystem name can
        raise UnsafeEntryError(raw_b, "path contains a NUL byte")
    return path


def _xattrs_of(ti: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    found: dict[str, bytes] = {}
    for key, value in ti.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            # libarchive (bsdtar) form: URL-encoded name, base64 value.
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :], errors="surrogateescape")
            found.setdefault(name, base64.b64decode(value + "=" * (-len(value) % 4)))
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            found[key[len("SCHILY.xattr.") :]] = fs_bytes(value)
    return filter_xattrs(found.items())


def header_entry(ti: tarfile.TarInfo, path: bytes, etype: EntryType) -> Entry:
    if etype is EntryType.SYMLINK and "\0" in ti.linkname:
        raise UnsafeEntryError(path, "symlink target contains a NUL byte")
    return Entry(
        path=path,
        type=etype,
        mode=ti.mode & 0o7777,
        uid=ti.uid,
        gid=ti.gid,
        mtime=math.floor(ti.mtime),
        size=ti.size if etype is EntryType.FILE else 0,
        xattrs=_xattrs_of(ti),
        link_target=fs_bytes(ti.linkname) if etype is EntryType.SYMLINK else b"",
        rdev=(ti.devmajor, ti.devminor) if etype in (EntryType.CHAR, EntryType.BLOCK) else (0, 0),
        content=EmptyContent() if etype is EntryType.FILE and ti.size == 0 else None,
    )


# Files up to MEMORY_SPOOL_FILE bytes are kept in memory while the total stays under
# MEMORY_SPOOL_BUDGET: creating, reopening and deleting one spool file per tiny member
# cost a third of a conversion's time (measured on a 280 MB Debian image).
MEMORY_SPOOL_FILE = 64 << 10
MEMORY_SPOOL_BUDGET = 96 << 20


class _Spool:
    """Numbered files in a private subdirectory of the caller's spool dir, and small
    files in memory within a fixed budget."""

    def __init__(self, spool_dir: str | os.PathLike[str]) -> None:
        self.dir = os.fsencode(tempfile.mkdtemp(prefix="tar-", dir=spool_dir))
        self._counter = itertools.count()
        self._memory_left = MEMORY_SPOOL_BUDGET

    def copy(self, src: IO[bytes], size: int, name: bytes) -> SpooledContent | MemoryContent:
        if size <= MEMORY_SPOOL_FILE and size <= self._memory_left:
            data = src.read(size)
            if len(data) != size:
                raise TarFormatError(f"{show_path(name)}: archive ends inside the file content")
            self._memory_left -= size
            return MemoryContent(data, size)
        path = self.dir + b"/%d" % next(self._counter)
        left = size
        buf = bytearray(min(_BLOCK, size))
        mv = memoryview(buf)
        with open(path, "wb", buffering=0) as out:
            while left:
                n = src.readinto(mv[: min(left, len(buf))])  # type: ignore[attr-defined]
                if not n:
                    raise TarFormatError(f"{show_path(name)}: archive ends inside the file content")
                out.write(mv[:n])
                left -= n
        return SpooledContent(path, size)


@contextlib.contextmanager
def open_tarfile(
    source: TarSource,
) -> Iterator[tuple[tarfile.TarFile, bytes | None]]:
    """Open a tar for sequential reading; also yield the file path when members can be
    served as byte ranges of it (an uncompressed tar file on disk)."""
    kw = {"encoding": "utf-8", "errors": "surrogateescape"}
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, bytes, os.PathLike)):
            path = os.fsencode(source)
            fobj: BinaryIO = stack.enter_context(open(path, "rb"))
            head = fobj.read(6)
            fobj.seek(0)
            if detect_compression(head) is Compression.NONE:
                yield stack.enter_context(tarfile.open(fileobj=fobj, mode="r:", **kw)), path  # type: ignore[call-overload]
                return
        else:
            fobj = source
        stream = stack.enter_context(open_decompressed(fobj))
        yield stack.enter_context(tarfile.open(fileobj=stream, mode="r|", **kw)), None  # type: ignore[call-overload]


def iter_tar_members(
    source: TarSource, *, spool_dir: str | os.PathLike[str]
) -> Iterator[TarMember]:
    """Yield the members of a tar stream in archive order, contents spooled or ranged.

    Long names (GNU and PAX), PAX xattrs (``SCHILY.xattr.*`` and libarchive's
    form) and non-UTF-8 names are decoded; ``..`` components are refused.
    """
    spool: _Spool | None = None
    try:
        with open_tarfile(source) as (tf, range_path):
            while True:
                ti = tf.next()
                if ti is None:
                    break
                # tarfile keeps every TarInfo it has seen; we need none of them.
                tf.members.clear()  # type: ignore[attr-defined]
                path = member_path(ti.name)
                if ti.type == tarfile.LNKTYPE:
                    entry = header_entry(ti, path, EntryType.FILE)
                    yield TarMember(replace(entry, size=0, content=None), member_path(ti.linkname))
                    continue
                etype = TAR_TYPES.get(ti.type)
                if etype is None:
                    raise TarFormatError(
                        f"{show_path(fs_bytes(ti.name))}: unsupported tar entry type {ti.type!r}"
                    )
                entry = header_entry(ti, path, etype)
                if etype is EntryType.FILE and ti.size:
                    content: Content
                    if range_path is not None and not ti.sparse:
                        content = RangeContent(range_path, ti.offset_data, ti.size)
                    else:
                        if spool is None:
                            spool = _Spool(spool_dir)
                        src = tf.extractfile(ti)
                        assert src is not None
                        content = spool.copy(src, ti.size, path)
                    entry = replace(entry, content=content)
                yield TarMember(entry)
    except (tarfile.TarError, EOFError, CompressionError) as exc:
        raise TarFormatError(f"not a readable tar stream: {exc}") from exc


class _LinkResolver:
    """Turns LNKTYPE members into FILE entries sharing content and a group key."""

    def __init__(self) -> None:
        self._keys = itertools.count()

    def link(self, member: TarMember, target: Entry | None) -> tuple[Entry, Entry | None]:
        """Return (link entry, updated target entry or None if unchanged)."""
        name = member.entry.path
        if target is None:
            raise TarFormatError(
                f"{show_path(name)}: hardlink to {show_path(member.hardlink_to or b'')!r}, "
                "which is not earlier in the archive"
            )
        if target.type is not EntryType.FILE:
            # A hardlinked symlink or device: keep a copy; the model links files only.
            return replace(target, path=name), None
        updated = None
        if target.hardlink_group is None:
            target = replace(target, hardlink_group=b"\0%d" % next(self._keys))
            updated = target
        return replace(target, path=name), updated


def read_tar(source: TarSource, *, spool_dir: str | os.PathLike[str]) -> Tree:
    """Read one tar stream (plain, gzip or zstd; detected by magic bytes) into a Tree.

    Regular-file contents of compressed or non-seekable streams are copied into
    ``spool_dir`` (one file each, streamed); an uncompressed tar given by path is
    referenced by byte ranges instead and must not change while the tree is used.
    A later member at the same path replaces the earlier one; whiteout files are
    ordinary files here (see :func:`flatten_layers`).
    """
    tree = Tree()
    links = _LinkResolver()
    for member in iter_tar_members(source, spool_dir=spool_dir):
        entry = member.entry
        if member.hardlink_to is not None:
            entry, updated = links.link(member, tree.get(member.hardlink_to))
            if updated is not None:
                tree.add(updated)
        _replace_at(tree, entry)
    tree.canonicalize_hardlinks()
    return tree


def _replace_at(tree: Tree, entry: Entry) -> None:
    # Like extracting: a non-directory replacing a directory takes its subtree too.
    old = tree.get(entry.path)
    if old is not None and old.type is EntryType.DIR and entry.type is not EntryType.DIR:
        tree.remove_subtree(entry.path)
    tree.add(entry)


def flatten_layers(layers: Iterable[TarSource], *, spool_dir: str | os.PathLike[str]) -> Tree:
    """Apply OCI layer tar streams in order, bottom first, into one Tree.

    ``DIR/.wh.NAME`` deletes NAME (and its subtree) from lower layers;
    ``DIR/.wh..wh..opq`` hides everything lower layers had below DIR. Whiteouts
    never affect entries of their own layer. A later entry replaces an earlier
    one at the same path (a non-directory over a directory removes the subtree).
    Hardlinks may point at paths of the same or a lower layer; a path replaced
    later leaves the group, and the other members keep the old content.
    """
    tree = Tree()
    links = _LinkResolver()
    for layer in layers:
        upper: dict[bytes, Entry] = {}
        drop_whole: set[bytes] = set()
        drop_below: set[bytes] = set()
        for member in iter_tar_members(layer, spool_dir=spool_dir):
            entry = member.entry
            base = entry.path.rsplit(b"/", 1)[-1]
            if base.startswith(_WHITEOUT_PREFIX):
                if base == _OPAQUE:
                    drop_below.add(parent_of(entry.path))
                elif not base.startswith(b".wh..wh."):  # other .wh..wh.* is AUFS metadata
                    parent = parent_of(entry.path)
                    name = base[len(_WHITEOUT_PREFIX) :]
                    drop_whole.add(parent + b"/" + name if parent else name)
                continue
            if member.hardlink_to is not None:
                target_path = member.hardlink_to
                in_upper = target_path in upper
                target = upper.get(target_path) if in_upper else tree.get(target_path)
                entry, updated = links.link(member, target)
                if updated is not None:
                    if in_upper:
                        upper[target_path] = updated
                    else:
                        tree.add(updated)
            old = upper.get(entry.path)
            if old is not None and old.type is EntryType.DIR and entry.type is not EntryType.DIR:
                for p in [p for p in upper if is_below(p, entry.path)]:
                    del upper[p]
            upper[entry.path] = entry
        for path, entry in upper.items():
            old = tree.get(path)
            if old is not None and old.type is EntryType.DIR and entry.type is not EntryType.DIR:
                drop_whole.add(path)
        _drop(tree, drop_whole, drop_below)
        for path in sorted(upper, key=path_sort_key):
            _check_parents(tree, path)
            tree.add(upper[path])
    tree.canonicalize_hardlinks()
    return tree


def _ancestors(path: bytes) -> Iterator[bytes]:
    while path:
        path = parent_of(path)
        yield path


def _drop(tree: Tree, whole: set[bytes], below: set[bytes]) -> None:
    if not whole and not below:
        return
    for path in tree.paths():
        if path in whole or any(a in whole or a in below for a in _ancestors(path)):
            tree.remove(path)


def _check_parents(tree: Tree, path: bytes) -> None:
    for a in _ancestors(path):
        e = tree.get(a)
        if e is not None and e.type is not EntryType.DIR:
            raise TreeError(
                f"{show_path(path)}: a layer puts it below {show_path(a)!r}, which a lower "
                f"layer made a {e.type.value}; the image is inconsistent"
            )
