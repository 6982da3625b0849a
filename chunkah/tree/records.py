"""The canonical tar as a sequence of records: what each member's header is and
which content follows it.  write_tar and the chunked layer writer both consume it,
so the two can never disagree about the bytes of a layer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from chunkah.tree.model import Entry, EntryType, Tree
from chunkah.tree.tar_writer import tar_header

TYPEFLAG = {
    EntryType.FILE: b"0",
    EntryType.DIR: b"5",
    EntryType.SYMLINK: b"2",
    EntryType.CHAR: b"3",
    EntryType.BLOCK: b"4",
    EntryType.FIFO: b"6",
}
LNKTYPE = b"1"
END_OF_ARCHIVE = bytes(1024)


@dataclass(frozen=True)
class TarRecord:
    """One member: its entry (mtime already clamped), header block(s), payload size.

    ``hardlink_to`` is the path of the group's first member when this entry is
    written as a link (no payload); ``padding`` is the zero fill after the payload.
    """

    entry: Entry
    header: bytes
    payload_size: int
    hardlink_to: bytes | None

    @property
    def padding(self) -> int:
        return -self.payload_size % 512


def iter_tar_records(tree: Tree, *, mtime_clamp: int | None = None) -> Iterator[TarRecord]:
    """Records in canonical order; hardlink groups: first member a file, the rest links."""
    first_of: dict[bytes, bytes] = {}
    for members in tree.hardlink_groups().values():
        for p in members[1:]:
            first_of[p] = members[0]
    for entry in tree:
        path = entry.path
        mtime = entry.mtime if mtime_clamp is None else min(entry.mtime, mtime_clamp)
        if mtime != entry.mtime:
            from dataclasses import replace

            entry = replace(entry, mtime=mtime)
        etype = entry.type
        size = 0
        linkname = b""
        link_to = None
        if etype is EntryType.DIR:
            name = path + b"/" if path else b"./"
            typeflag = TYPEFLAG[etype]
        else:
            name = path
            typeflag = TYPEFLAG[etype]
            if etype is EntryType.FILE:
                link_to = first_of.get(path)
                if link_to is not None:
                    typeflag = LNKTYPE
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
            mtime=mtime,
            linkname=linkname,
            rdev=entry.rdev,
            xattrs=entry.xattrs,
        )
        yield TarRecord(entry, header, size, link_to)
