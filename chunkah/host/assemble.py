"""Executes the assemble part of an update plan: writes the new tree into staging.

Entries are created in canonical order, so every parent is a directory this code
made (the planner refused trees whose parents are not directories); nothing is
ever written through a symlink.  Every file built from chunks is checked against
its sha256 before it counts; local chunks are re-hashed as they are copied.
Directory metadata is applied last, deepest first, so mtimes stick.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chunkah.errors import StateError, VerificationError
from chunkah.host.deploy import crash_point
from chunkah.host.index import IndexEntry, LayerIndex
from chunkah.host.plan import FileStep, UpdatePlan
from chunkah.tree import Entry, EntryType, FileContent, Tree, write_tar

__all__ = ["AssembleStats", "assemble", "verify_diff_ids"]

ReadChunk = Callable[[bytes], bytes]  # sha256 -> verified bytes from the chunk cache
FileWritten = Callable[[int], None]  # called with each file's byte count (progress)

_IS_ROOT = os.geteuid() == 0


@dataclass
class AssembleStats:
    entries: int = 0
    linked: int = 0
    copied: int = 0
    built: int = 0
    bytes_written: int = 0


def _join(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel if rel else root


def _apply_metadata(path: bytes, entry: IndexEntry, *, is_symlink: bool = False) -> None:
    if _IS_ROOT:
        os.lchown(path, entry.uid, entry.gid)
    if not is_symlink:
        os.chmod(path, stat.S_IMODE(entry.mode) | (entry.mode & 0o7000))
        for name, value in entry.xattrs:
            os.setxattr(path, name, value, follow_symlinks=False)
    os.utime(path, ns=(entry.mtime * 10**9, entry.mtime * 10**9), follow_symlinks=False)


def _write_file(
    step: FileStep,
    dest: bytes,
    current: bytes | None,
    read_chunk: ReadChunk,
    fsync: bool,
) -> int:
    entry = step.entry
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dest, flags, 0o600)
    try:
        whole = hashlib.sha256()
        written = 0
        if step.action == "copy":
            assert current is not None
            src = os.open(_join(current, step.local), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                while written < entry.size:
                    data = os.pread(src, min(1 << 20, entry.size - written), written)
                    if not data:
                        break
                    whole.update(data)
                    os.write(fd, data)
                    written += len(data)
            finally:
                os.close(src)
        else:
            sources: dict[bytes, int] = {}
            try:
                for c in step.chunks:
                    if c.source == "local":
                        assert current is not None and c.local is not None
                        cached_fd = sources.get(c.local.path)
                        if cached_fd is None:
                            cached_fd = os.open(
                                _join(current, c.local.path),
                                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            )
                            sources[c.local.path] = cached_fd
                        data = os.pread(cached_fd, c.size, c.local.offset)
                        if len(data) != c.size or hashlib.sha256(data).digest() != c.sha256:
                            raise VerificationError(
                                f"{entry.path!r}: the local chunk in {c.local.path!r} does not match "
                                "its digest (was the deployment modified?)"
                            )
                    elif c.source == "zeros":
                        data = bytes(c.size)
                        if hashlib.sha256(data).digest() != c.sha256:
                            raise VerificationError(
                                f"{entry.path!r}: a hole's digest is not that of zeros"
                            )
                    else:
                        data = read_chunk(c.sha256)
                        if len(data) != c.size:
                            raise VerificationError(
                                f"{entry.path!r}: cached chunk has the wrong size"
                            )
                    whole.update(data)
                    os.write(fd, data)
                    written += len(data)
            finally:
                for src in sources.values():
                    os.close(src)
        if written != entry.size or whole.digest() != entry.sha256:
            raise VerificationError(
                f"{entry.path!r}: assembled content does not match its sha256 "
                f"({written} bytes, expected {entry.size})"
            )
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return written


def assemble(
    plan: UpdatePlan,
    staging: Path,
    *,
    current: Path | None,
    read_chunk: ReadChunk,
    fsync: bool = False,
    link: Callable[[bytes, bytes], None] | None = None,
    progress: FileWritten | None = None,
) -> AssembleStats:
    """Create the plan's tree under ``staging`` (which must exist and be empty).

    With ``fsync`` every file and directory is fsynced as it is finished; without it
    (the default) the caller makes the tree durable, as ``commit_deployment`` does
    with one syncfs before the switch.
    """
    root = os.fsencode(staging)
    cur = os.fsencode(current) if current is not None else None
    if any(os.scandir(root)):
        raise StateError(f"{staging}: staging directory is not empty")
    steps = {f.entry.path: f for f in plan.files}
    stats = AssembleStats()
    dirs: list[tuple[bytes, IndexEntry]] = []
    do_link = link or os.link
    try:
        for _layer, entry in plan.entries:
            dest = _join(root, entry.path)
            kind = entry.type
            stats.entries += 1
            if kind == "dir":
                if entry.path:
                    os.mkdir(dest, 0o700)
                dirs.append((dest, entry))
                continue
            if kind == "file":
                step = steps[entry.path]
                if step.action == "link":
                    assert cur is not None
                    try:
                        do_link(_join(cur, step.local), dest)
                        stats.linked += 1
                        crash_point("file-linked")
                        continue
                    except OSError:
                        step = FileStep(step.entry, step.layer, "copy", local=step.local)
                if step.action == "empty":
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    os.close(fd)
                else:
                    n = _write_file(step, dest, cur, read_chunk, fsync)
                    stats.bytes_written += n
                    if step.action == "copy":
                        stats.copied += 1
                    else:
                        stats.built += 1
                    if progress is not None:
                        progress(n)
                _apply_metadata(dest, entry)
                crash_point("file-written")
            elif kind == "hardlink":
                os.link(_join(root, entry.link), dest)
            elif kind == "symlink":
                os.symlink(entry.link, dest)
                _apply_metadata(dest, entry, is_symlink=True)
            elif kind in ("char", "block", "fifo"):
                fmt = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[kind]
                os.mknod(dest, fmt | 0o600, os.makedev(*entry.rdev) if kind != "fifo" else 0)
                _apply_metadata(dest, entry)
            else:  # pragma: no cover - the planner only passes known types
                raise VerificationError(f"{entry.path!r}: unknown entry type {kind}")
        for dest, entry in reversed(dirs):
            _apply_metadata(dest, entry)
            if fsync:
                fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            crash_point("dir-written")
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise StateError(
                f"no space left while writing the new deployment under {staging}"
            ) from exc
        raise
    return stats


def _tree_entry(entry: IndexEntry, staging: bytes, group: dict[bytes, bytes]) -> Entry:
    etype = {
        "file": EntryType.FILE, "hardlink": EntryType.FILE, "dir": EntryType.DIR,
        "symlink": EntryType.SYMLINK, "char": EntryType.CHAR, "block": EntryType.BLOCK,
        "fifo": EntryType.FIFO,
    }[entry.type]  # fmt: skip
    content = None
    hardlink_group = None
    size = 0
    if entry.type in ("file", "hardlink"):
        size = entry.size
        source = entry.link if entry.type == "hardlink" else entry.path
        content = FileContent(_join(staging, source), size)
        hardlink_group = group.get(entry.path)
    return Entry(
        path=entry.path, type=etype, mode=entry.mode, uid=entry.uid, gid=entry.gid,
        mtime=entry.mtime, size=size, xattrs=entry.xattrs,
        link_target=entry.link if entry.type == "symlink" else b"",
        rdev=entry.rdev, content=content, hardlink_group=hardlink_group,
    )  # fmt: skip


class _HashSink:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return len(data)

    def flush(self) -> None:
        pass


def verify_diff_ids(indexes: Sequence[LayerIndex], staging: Path, layers: Sequence[int]) -> int:
    """Regenerate the canonical tar of each chunkah layer in ``layers`` from its index
    and the staged files, and check it against the layer's diff_id.  Returns bytes hashed.

    This re-reads the layer's content once (the documented cost of closing the
    verification chain); layers whose files a later layer replaced are skipped.
    """
    root = os.fsencode(staging)
    total = 0
    owner: dict[bytes, int] = {}
    for li, ix in enumerate(indexes):
        for e in ix.entries:
            if e.type != "dir":
                owner[e.path] = li
    for li in layers:
        ix = indexes[li]
        if ix.kind != "chunkah":
            continue
        if any(owner.get(e.path, li) != li for e in ix.entries if e.type != "dir"):
            continue
        group: dict[bytes, bytes] = {}
        for e in ix.entries:
            if e.type == "hardlink":
                group[e.path] = e.link
                group[e.link] = e.link
        tree = Tree(_tree_entry(e, root, group) for e in ix.entries)
        sink = _HashSink()
        written = write_tar(tree, sink, digest=False)  # type: ignore[arg-type]
        total += written.size
        got = "sha256:" + sink.h.hexdigest()
        if got != ix.diff_id:
            raise VerificationError(
                f"layer {ix.digest}: the assembled files regenerate a tar with {got}, "
                f"not its diff_id {ix.diff_id}"
            )
    return total
