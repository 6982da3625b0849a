"""Read a rootfs directory into a :class:`Tree` without following any symlink."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from chunkah.tree.errors import SpecialFileError, TreeError, show_path
from chunkah.tree.model import Entry, EntryType, FileContent, Tree, filter_xattrs, normalize_path

__all__ = ["parse_prune", "read_dir"]


def parse_prune(prune: Iterable[str | bytes]) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """Split prune rules into (drop path and below, keep dir but drop its contents).

    ``/p`` drops ``p`` and everything below it; ``/p/`` keeps the directory ``p``
    itself and drops what is inside it. Paths are relative to the tree root; a
    leading '/' is optional. ``/`` alone would prune everything and is refused.
    """
    whole: set[bytes] = set()
    contents: set[bytes] = set()
    for rule in prune:
        raw = os.fsencode(rule)
        path = normalize_path(raw)
        if b".." in path.split(b"/"):
            raise TreeError(f"prune rule {show_path(raw)!r} must not contain '..'")
        if raw.endswith(b"/"):
            contents.add(path)  # b"" here means "drop everything below the root"
        elif not path:
            raise TreeError(f"prune rule {show_path(raw)!r} names no path")
        else:
            whole.add(path)
    return frozenset(whole), frozenset(contents)


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        # Filesystems without xattr support (or symlinks on some) just have none.
        if exc.errno in (95, 61):  # EOPNOTSUPP, ENODATA
            return ()
        raise
    if not names:
        return ()
    items = []
    for name in names:
        try:
            items.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno == 61:  # removed between list and get
                continue
            raise
    return filter_xattrs(items)


_SPECIAL_TYPES = {
    stat.S_IFCHR: EntryType.CHAR,
    stat.S_IFBLK: EntryType.BLOCK,
    stat.S_IFIFO: EntryType.FIFO,
}


def _special_kind(mode: int) -> str | None:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return None


def read_dir(
    root: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    *,
    prune: Iterable[str | bytes] = (),
    skip_special_files: bool = False,
    include_special_files: bool = False,
) -> Tree:
    """Read the directory ``root`` into a Tree (metadata only; contents stay on disk).

    Never follows a symlink: entries are lstat'ed, directories opened with
    O_NOFOLLOW, and file contents are opened with O_NOFOLLOW when written out.
    Hardlinks are found by (st_dev, st_ino). Devices and fifos raise
    :class:`SpecialFileError` unless ``skip_special_files`` is set (they are left
    out) or ``include_special_files`` is set (they become CHAR/BLOCK/FIFO entries,
    for trees that are not a bootable rootfs, e.g. tests of every entry type). Sockets are always left out (like GNU tar: they cannot
    be archived meaningfully). ``prune`` takes rules as described in
    :func:`parse_prune`.
    """
    root_b = os.fsencode(root).rstrip(b"/") or b"/"
    prune_whole, prune_contents = parse_prune(prune)
    st = os.lstat(root_b)
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"{show_path(root_b)}: not a directory")

    def join(rel: bytes) -> bytes:
        if not rel:
            return root_b
        return (root_b if root_b != b"/" else b"") + b"/" + rel

    tree = Tree()
    inodes: dict[tuple[int, int], bytes] = {}
    tree.add(_dir_entry(b"", root_b, st))
    # Depth-first over directories; each one opened O_NOFOLLOW so a directory
    # swapped for a symlink after lstat is refused instead of followed.
    pending: list[bytes] = [] if b"" in prune_contents else [b""]
    while pending:
        rel_dir = pending.pop()
        abs_dir = join(rel_dir)
        try:
            fd = os.open(abs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise TreeError(f"{show_path(abs_dir)}: cannot open directory: {exc.strerror}") from exc
        try:
            with os.scandir(fd) as it:
                names = sorted(os.fsencode(d.name) for d in it)
        finally:
            os.close(fd)
        for name in names:
            rel = rel_dir + b"/" + name if rel_dir else name
            if rel in prune_whole:
                continue
            abs_path = join(rel)
            st = os.lstat(abs_path)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                tree.add(_dir_entry(rel, abs_path, st))
                if rel not in prune_contents:
                    pending.append(rel)
            elif stat.S_ISREG(mode):
                group = None
                if st.st_nlink > 1:
                    group = inodes.setdefault((st.st_dev, st.st_ino), rel)
                tree.add(
                    Entry(
                        path=rel,
                        type=EntryType.FILE,
                        mode=stat.S_IMODE(mode),
                        uid=st.st_uid,
                        gid=st.st_gid,
                        mtime=st.st_mtime_ns // 1_000_000_000,
                        size=st.st_size,
                        xattrs=_xattrs(abs_path),
                        content=FileContent(abs_path, st.st_size),
                        hardlink_group=group,
                    )
                )
            elif stat.S_ISLNK(mode):
                tree.add(
                    Entry(
                        path=rel,
                        type=EntryType.SYMLINK,
                        mode=stat.S_IMODE(mode),
                        uid=st.st_uid,
                        gid=st.st_gid,
                        mtime=st.st_mtime_ns // 1_000_000_000,
                        xattrs=_xattrs(abs_path),
                        link_target=os.readlink(abs_path),
                    )
                )
            elif stat.S_ISSOCK(mode):
                continue
            else:
                etype = _SPECIAL_TYPES.get(stat.S_IFMT(mode))
                if include_special_files and etype is not None:
                    tree.add(
                        Entry(
                            path=rel,
                            type=etype,
                            mode=stat.S_IMODE(mode),
                            uid=st.st_uid,
                            gid=st.st_gid,
                            mtime=st.st_mtime_ns // 1_000_000_000,
                            xattrs=_xattrs(abs_path),
                            rdev=(
                                (os.major(st.st_rdev), os.minor(st.st_rdev))
                                if etype is not EntryType.FIFO
                                else (0, 0)
                            ),
                        )
                    )
                elif not skip_special_files:
                    kind = _special_kind(mode) or f"file of unknown type {stat.S_IFMT(mode):o}"
                    raise SpecialFileError(rel, kind)
    tree.canonicalize_hardlinks()
    return tree


def _dir_entry(rel: bytes, abs_path: bytes, st: os.stat_result) -> Entry:
    return Entry(
        path=rel,
        type=EntryType.DIR,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns // 1_000_000_000,
        xattrs=_xattrs(abs_path),
    )
