"""The canonical, reproducible tar writer. The byte-level rules are in docs/tree.md."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from chunkah.tree.errors import TreeError, show_path
from chunkah.tree.model import Entry, EntryType, FileContent, Tree

__all__ = [
    "END_OF_ARCHIVE",
    "TarRecord",
    "WrittenTar",
    "iter_tar_records",
    "tar_header",
    "write_tar",
]

_BLOCK = 1 << 20  # content is streamed in blocks of this size; memory stays bounded
_ZEROS = bytes(_BLOCK)

_TYPEFLAG = {
    EntryType.FILE: b"0",
    EntryType.DIR: b"5",
    EntryType.SYMLINK: b"2",
    EntryType.CHAR: b"3",
    EntryType.BLOCK: b"4",
    EntryType.FIFO: b"6",
}
_LNKTYPE = b"1"
_PAXTYPE = b"x"
_PAX_NAME = b"././@PaxHeader"
_MAX7 = 8**7  # largest value + 1 of an 8-byte octal field
_MAX11 = 8**11  # ... of a 12-byte octal field
_MAGIC = b"ustar\x0000"
_OCTAL_ZERO7 = b"0000000\x00"
# uname, gname (empty), then devmajor/devminor are appended per entry, then prefix + pad.
_EMPTY_NAMES = bytes(64)
_TAIL = bytes(167)  # prefix[155] + pad[12]
# The chksum field counts as eight spaces while the sum is taken.
_CHKSUM_SPACES = 8 * 0x20


@dataclass(frozen=True)
class WrittenTar:
    """What :func:`write_tar` wrote: byte count and sha256 (hex, lowercase)."""

    size: int
    sha256: str

    @property
    def digest(self) -> str:
        """``sha256:<hex>``, the form OCI uses for diff_ids and blob digests."""
        return f"sha256:{self.sha256}"


def _o7(value: int) -> bytes:
    return b"%07o\x00" % value


def _o11(value: int) -> bytes:
    return b"%011o\x00" % value


def _pax_record(key: bytes, value: bytes) -> bytes:
    # The length prefix counts itself; grow it until it is self-consistent.
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fit_name(name: bytes) -> bytes:
    # Fallback for the 100-byte ustar field when the real name travels in PAX:
    # non-ASCII bytes become '?', then truncate. Deterministic and harmless.
    if not name.isascii():
        name = bytes(c if c < 0x80 else 0x3F for c in name)
    return name[:100]


def tar_header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
    rdev: tuple[int, int] = (0, 0),
    xattrs: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    """The header block(s) for one member: an optional PAX 'x' header, then ustar.

    ``name`` is the archive name as written (directories end in '/'). PAX records
    are added only when a value does not fit ustar; see docs/tree.md.
    """
    pax: list[bytes] = []
    binary = False
    if len(name) > 100 or not name.isascii():
        binary |= not _is_utf8(name)
        pax.append(_pax_record(b"path", name))
        name = _fit_name(name)
    if linkname and (len(linkname) > 100 or not linkname.isascii()):
        binary |= not _is_utf8(linkname)
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = _fit_name(linkname)
    if size >= _MAX11:
        pax.append(_pax_record(b"size", b"%d" % size))
        size = 0
    if uid >= _MAX7:
        pax.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid >= _MAX7:
        pax.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if not 0 <= mtime < _MAX11:
        pax.append(_pax_record(b"mtime", b"%d" % mtime))
        mtime = 0
    for key, value in xattrs:
        pax.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), value))
    out = b""
    if pax:
        if binary:
            # Names that are not UTF-8 travel as raw bytes, flagged as POSIX requires.
            pax.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
        records = b"".join(pax)
        out = _ustar(_PAX_NAME, _PAXTYPE, 0o644, 0, 0, len(records), 0, b"", (0, 0))
        out += records + _ZEROS[: -len(records) % 512]
    if rdev[0] >= _MAX7 or rdev[1] >= _MAX7:
        raise TreeError(f"{show_path(name)}: device number {rdev} does not fit a tar header")
    return out + _ustar(name, typeflag, mode, uid, gid, size, mtime, linkname, rdev)


def _ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    rdev: tuple[int, int],
) -> bytes:
    head = name.ljust(100, b"\x00") + _o7(mode) + _o7(uid) + _o7(gid) + _o11(size) + _o11(mtime)
    dev = _o7(rdev[0]) + _o7(rdev[1]) if rdev != (0, 0) else _OCTAL_ZERO7 + _OCTAL_ZERO7
    tail = typeflag + linkname.ljust(100, b"\x00") + _MAGIC + _EMPTY_NAMES + dev
    # Only head and tail vary; the prefix/pad are zeros and add nothing to the sum.
    chksum = sum(head) + sum(tail) + _CHKSUM_SPACES
    return head + b"%06o\x00 " % chksum + tail + _TAIL


class _Sink:
    """Batches small writes into one buffer and hashes what it passes on."""

    def __init__(self, out: BinaryIO, digest: bool) -> None:
        self.out = out
        self.hasher = hashlib.sha256() if digest else None
        self.buf = bytearray(2 * _BLOCK)
        self.view = memoryview(self.buf)
        self.fill = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        if self.fill + n > len(self.buf):
            self.flush()
            if n > len(self.buf):
                self._pass(data)
                return
        self.view[self.fill : self.fill + n] = data
        self.fill += n

    def reserve(self, n: int) -> memoryview:
        """Space for ``n`` bytes at the end of the buffer (flushing first if needed)."""
        if self.fill + n > len(self.buf):
            self.flush()
        return self.view[self.fill : self.fill + n]

    def commit(self, n: int) -> None:
        self.fill += n

    def flush(self) -> None:
        if self.fill:
            self._pass(self.view[: self.fill])
            self.fill = 0

    def _pass(self, data: bytes | memoryview) -> None:
        if self.hasher is not None:
            self.hasher.update(data)
        self.out.write(data)
        self.total += len(data)


def _copy_content(sink: _Sink, entry: Entry) -> None:
    content = entry.content
    if content is None:
        raise TreeError(f"{show_path(entry.path)}: regular file without a content source")
    size = entry.size
    if isinstance(content, FileContent):
        fd = os.open(content.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _copy_fd(sink, fd, size, entry)
            if os.fstat(fd).st_size != size:
                raise TreeError(
                    f"{content.describe()}: file changed size while being archived; "
                    "build from a tree that is not being modified"
                )
        finally:
            os.close(fd)
        return
    with content.open() as f:
        left = size
        while left:
            mv = sink.reserve(min(left, _BLOCK))
            n = f.readinto(mv)  # type: ignore[attr-defined]
            if not n:
                raise TreeError(f"{content.describe()}: content ended {left} bytes early")
            sink.commit(n)
            left -= n


def _copy_fd(sink: _Sink, fd: int, size: int, entry: Entry) -> None:
    left = size
    while left:
        mv = sink.reserve(min(left, _BLOCK))
        n = os.readv(fd, [mv])
        if not n:
            raise TreeError(
                f"{show_path(entry.path)}: file shrank while being archived ({left} bytes missing)"
            )
        sink.commit(n)
        left -= n


END_OF_ARCHIVE = bytes(1024)


@dataclass(frozen=True)
class TarRecord:
    """One member of the canonical tar: its entry (mtime clamped), header block(s)
    and payload size.  ``hardlink_to`` names the group's first member when this
    entry is written as a link (then it has no payload)."""

    entry: Entry
    header: bytes
    payload_size: int
    hardlink_to: bytes | None

    @property
    def padding(self) -> int:
        return -self.payload_size % 512


def iter_tar_records(tree: Tree, *, mtime_clamp: int | None = None) -> Iterator[TarRecord]:
    """The canonical tar as records, in order (without the end-of-archive blocks).

    :func:`write_tar` and the chunked layer writer both consume this, so the two
    can never disagree about a layer's bytes.
    """
    first_of: dict[bytes, bytes] = {}
    for members in tree.hardlink_groups().values():
        for p in members[1:]:
            first_of[p] = members[0]
    for entry in tree:
        path = entry.path
        if mtime_clamp is not None and entry.mtime > mtime_clamp:
            entry = replace(entry, mtime=mtime_clamp)
        etype = entry.type
        size = 0
        linkname = b""
        link_to = None
        if etype is EntryType.DIR:
            name = path + b"/" if path else b"./"
            typeflag = b"5"
        else:
            name = path
            typeflag = _TYPEFLAG[etype]
            if etype is EntryType.FILE:
                link_to = first_of.get(path)
                if link_to is not None:
                    typeflag = _LNKTYPE
                    linkname = link_to
                else:
                    size = entry.size
            elif etype is EntryType.SYMLINK:
                linkname = entry.link_target
        header = tar_header(
            name,
            typeflag,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=size,
            mtime=entry.mtime,
            linkname=linkname,
            rdev=entry.rdev,
            xattrs=entry.xattrs,
        )
        yield TarRecord(entry, header, size, link_to)


def write_tar(
    tree: Tree,
    out: BinaryIO,
    *,
    mtime_clamp: int | None = None,
    digest: bool = True,
) -> WrittenTar:
    """Write ``tree`` as a canonical tar to ``out`` and return its size and sha256.

    Same tree and clamp -> same bytes. Entries in canonical order; the root
    (``b""``) is written as ``./`` when the tree has it; hardlink groups become
    one regular file (first in canonical order) plus LNKTYPE members; mtimes are
    ``min(mtime, mtime_clamp)``. With ``digest=False`` the sha256 is not computed
    and returned empty. The archive ends with two zero blocks, no record padding.
    """
    sink = _Sink(out, digest)
    for record in iter_tar_records(tree, mtime_clamp=mtime_clamp):
        sink.write(record.header)
        if record.payload_size:
            _copy_content(sink, record.entry)
            if record.padding:
                sink.write(_ZEROS[: record.padding])
    sink.write(_ZEROS[:1024])
    sink.flush()
    return WrittenTar(sink.total, sink.hasher.hexdigest() if sink.hasher is not None else "")
