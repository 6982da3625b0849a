"""Safe tar extraction: nothing an archive says can write outside the destination.

Every path is resolved component by component from a directory fd of the
destination with O_NOFOLLOW; symlinks met on the way are followed only while
they stay inside the destination. The last component is never followed: what is
there is removed and created afresh (O_EXCL), so a planted symlink cannot
redirect a write. Rules are listed in docs/tree.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO

from chunkah.compression import CompressionError
from chunkah.tree.errors import TarFormatError, TreeError, UnsafeEntryError, show_path
from chunkah.tree.model import Entry, EntryType, normalize_path, parent_of
from chunkah.tree.tar_reader import TAR_TYPES, TarSource, fs_bytes, header_entry, open_tarfile

__all__ = ["ExtractResult", "extract_tar"]

_BLOCK = 1 << 20
_MAX_SYMLINK_HOPS = 40  # same limit as the kernel's
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract_tar` did."""

    entries: int
    content_bytes: int
    # Entries not created because the caller disallowed them (e.g. devices when not root).
    skipped: tuple[bytes, ...]


def _check_name(raw: bytes, entry_name: bytes, what: str = "path") -> bytes:
    if raw.startswith(b"/"):
        raise UnsafeEntryError(entry_name, f"{what} {show_path(raw)!r} is absolute")
    path = normalize_path(raw)
    if b".." in path.split(b"/"):
        raise UnsafeEntryError(entry_name, f"{what} {show_path(raw)!r} contains a '..' component")
    return path


class _Extractor:
    def __init__(
        self, dest: bytes, *, same_owner: bool, create_devices: bool, apply_xattrs: bool
    ) -> None:
        self.dest = dest
        self.dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.same_owner = same_owner
        self.create_devices = create_devices
        self.apply_xattrs = apply_xattrs
        self.files: set[bytes] = set()  # regular files this archive wrote: valid hardlink targets
        self.dirs: dict[bytes, Entry] = {}  # directory metadata, applied at the end
        self.skipped: list[bytes] = []
        self.count = 0
        self.content_bytes = 0
        self._cache: tuple[bytes, int] | None = None  # (parent path, fd) of the last entry

    def close(self) -> None:
        self._drop_cache()
        os.close(self.dest_fd)

    def _drop_cache(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    # --- path resolution -------------------------------------------------------

    def resolve_dir(self, path: bytes, entry_name: bytes, *, create: bool) -> int:
        """An fd for directory ``path`` inside dest; caller must not close it (cached)."""
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        fd = self._walk(path, entry_name, create=create)
        self._drop_cache()
        self._cache = (path, fd)
        return fd

    def _walk(self, path: bytes, entry_name: bytes, *, create: bool) -> int:
        stack = [os.dup(self.dest_fd)]
        pending = list(reversed(path.split(b"/"))) if path else []
        walked: list[bytes] = []  # for messages: the path as resolved so far
        hops = 0
        try:
            while pending:
                comp = pending.pop()
                if comp in (b"", b"."):
                    continue
                if comp == b"..":
                    if len(stack) == 1:
                        raise UnsafeEntryError(
                            entry_name, "a symlink on its path leads outside the destination"
                        )
                    os.close(stack.pop())
                    walked.pop()
                    continue
                top = stack[-1]
                try:
                    st = os.stat(comp, dir_fd=top, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise
                    # Parents the archive did not list; tar makes them too.
                    os.mkdir(comp, 0o755, dir_fd=top)
                    st = os.stat(comp, dir_fd=top, follow_symlinks=False)
                shown = b"/".join([*walked, comp])
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise UnsafeEntryError(
                            entry_name, "too many levels of symlinks on its path"
                        )
                    target = os.readlink(comp, dir_fd=top)
                    if target.startswith(b"/"):
                        raise UnsafeEntryError(
                            entry_name,
                            f"{show_path(shown)!r} on its path is a symlink to an absolute "
                            "path, which would lead outside the destination",
                        )
                    pending.extend(reversed(target.split(b"/")))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafeEntryError(
                        entry_name, f"{show_path(shown)!r} on its path is not a directory"
                    )
                try:
                    stack.append(os.open(comp, _DIR_FLAGS, dir_fd=top))
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped under us
                        raise UnsafeEntryError(
                            entry_name, "its path changed during extraction"
                        ) from exc
                    raise
                walked.append(comp)
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    # --- entries -----------------------------------------------------------------

    def _clear(self, parent_fd: int, path: bytes, *, keep_dir: bool = False) -> bool:
        """Remove whatever is at ``path`` (never following it). True if a directory is
        there and was kept because ``keep_dir``."""
        name = path.rsplit(b"/", 1)[-1]
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return False
        if keep_dir:
            return True
        shutil.rmtree(name, dir_fd=parent_fd)  # fd-based, does not follow symlinks
        # What was below is gone: forget its pending metadata and hardlink targets.
        prefix = path + b"/"
        self.dirs = {p: e for p, e in self.dirs.items() if p != path and not p.startswith(prefix)}
        self.files = {p for p in self.files if not p.startswith(prefix)}
        return False

    def add(self, ti: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        raw = fs_bytes(ti.name)
        path = _check_name(raw, raw)
        self.count += 1
        if ti.type == tarfile.LNKTYPE:
            self._hardlink(raw, path, _check_name(fs_bytes(ti.linkname), raw, "hardlink target"))
            return
        etype = TAR_TYPES.get(ti.type)
        if etype is None:
            raise TarFormatError(f"{show_path(raw)}: unsupported tar entry type {ti.type!r}")
        entry = header_entry(ti, path, etype)
        if not path:
            if etype is not EntryType.DIR:
                raise UnsafeEntryError(raw, "the archive root must be a directory")
            self.dirs[b""] = entry
            return
        # Anything that replaces a path on the cached parent chain invalidates it.
        if self._cache is not None and (
            self._cache[0] == path or self._cache[0].startswith(path + b"/")
        ):
            self._drop_cache()
        parent = parent_of(path)
        name = path.rsplit(b"/", 1)[-1]
        pfd = self.resolve_dir(parent, raw, create=True)
        self.files.discard(path)
        if etype is EntryType.DIR:
            if not self._clear(pfd, path, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=pfd)
            self.dirs[path] = entry
            return
        self._clear(pfd, path)
        self.dirs.pop(path, None)
        if etype is EntryType.FILE:
            src = tf.extractfile(ti)
            assert src is not None
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
            try:
                self._copy(src, fd, ti.size, raw)
                self._meta_fd(fd, entry)
            finally:
                os.close(fd)
            self.files.add(path)
        elif etype is EntryType.SYMLINK:
            os.symlink(entry.link_target, name, dir_fd=pfd)
            if self.same_owner:
                os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(name, ns=(entry.mtime * 10**9,) * 2, dir_fd=pfd, follow_symlinks=False)
        else:
            if etype is EntryType.FIFO:
                os.mkfifo(name, 0o600, dir_fd=pfd)
            elif self.create_devices:
                kind = stat.S_IFCHR if etype is EntryType.CHAR else stat.S_IFBLK
                os.mknod(name, kind | 0o600, os.makedev(*entry.rdev), dir_fd=pfd)
            else:
                self.skipped.append(path)
                return
            # Opening a fifo or device would block or touch hardware; use O_PATH-free calls
            # on the name we just created (mknod/mkfifo fail if anything was there).
            if self.same_owner:
                os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            os.chmod(name, entry.mode, dir_fd=pfd)
            os.utime(name, ns=(entry.mtime * 10**9,) * 2, dir_fd=pfd, follow_symlinks=False)

    def _copy(self, src: IO[bytes], fd: int, size: int, raw: bytes) -> None:
        buf = bytearray(min(size, _BLOCK))
        mv = memoryview(buf)
        left = size
        while left:
            n = src.readinto(mv[: min(left, len(buf))])  # type: ignore[attr-defined]
            if not n:
                raise TarFormatError(f"{show_path(raw)}: archive ends inside the file content")
            done = 0
            while done < n:
                done += os.write(fd, mv[done:n])
            left -= n
        self.content_bytes += size

    def _meta_fd(self, fd: int, entry: Entry) -> None:
        if self.same_owner:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)  # after chown, which clears setuid/setgid
        if self.apply_xattrs:
            for key, value in entry.xattrs:
                try:
                    os.setxattr(fd, key, value)
                except OSError as exc:
                    raise TreeError(
                        f"{show_path(entry.path)}: cannot set xattr {key}: {exc.strerror}"
                    ) from exc
        os.utime(fd, ns=(entry.mtime * 10**9,) * 2)

    def _hardlink(self, raw: bytes, path: bytes, target: bytes) -> None:
        if target not in self.files:
            raise UnsafeEntryError(
                raw,
                f"hardlink target {show_path(target)!r} is not a regular file extracted "
                "earlier from this archive",
            )
        if not path:
            raise UnsafeEntryError(raw, "the archive root cannot be a hardlink")
        if self._cache is not None and (
            self._cache[0] == path or self._cache[0].startswith(path + b"/")
        ):
            self._drop_cache()
        try:
            tfd = self._walk(parent_of(target), raw, create=False)
        except FileNotFoundError as exc:
            raise UnsafeEntryError(raw, f"hardlink target {show_path(target)!r} is gone") from exc
        try:
            tname = target.rsplit(b"/", 1)[-1]
            try:
                st = os.stat(tname, dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise UnsafeEntryError(raw, f"hardlink target {show_path(target)!r} is not a file")
            pfd = self.resolve_dir(parent_of(path), raw, create=True)
            name = path.rsplit(b"/", 1)[-1]
            if (parent_of(path), name) == (parent_of(target), tname):
                return  # a link to itself: nothing to do
            self._clear(pfd, path)
            self.dirs.pop(path, None)
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            self.files.add(path)
        finally:
            os.close(tfd)

    def finish(self) -> None:
        """Directory metadata last, deepest first, so child writes do not bump mtimes."""
        self._drop_cache()
        for path in sorted(self.dirs, key=lambda p: p.count(b"/") + bool(p), reverse=True):
            entry = self.dirs[path]
            fd = self._walk(path, path or b"./", create=False)
            try:
                self._meta_fd(fd, entry)
            finally:
                os.close(fd)


def extract_tar(
    source: TarSource,
    dest: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    *,
    same_owner: bool | None = None,
    create_devices: bool | None = None,
    apply_xattrs: bool = True,
) -> ExtractResult:
    """Extract a tar stream (plain, gzip or zstd) into the existing directory ``dest``.

    Refuses, with :class:`UnsafeEntryError` naming the entry: absolute paths,
    ``..`` components, paths whose parents go through a symlink that leaves
    ``dest`` (absolute targets, or relative ones climbing above it, chains
    included), and hardlinks to anything but a regular file this archive already
    extracted. Applies mode, mtime, kept xattrs (files and directories) and, when
    ``same_owner`` (default: running as root), uid/gid. Device nodes are created
    when ``create_devices`` (default: running as root), else listed as skipped;
    fifos are always created. Entries already extracted stay in place on error.
    """
    is_root = os.geteuid() == 0
    ex = _Extractor(
        os.fsencode(dest),
        same_owner=is_root if same_owner is None else same_owner,
        create_devices=is_root if create_devices is None else create_devices,
        apply_xattrs=apply_xattrs,
    )
    try:
        try:
            with open_tarfile(source) as (tf, _range_path):
                while True:
                    ti = tf.next()
                    if ti is None:
                        break
                    tf.members.clear()  # type: ignore[attr-defined]
                    ex.add(ti, tf)
        except (tarfile.TarError, EOFError, CompressionError) as exc:
            raise TarFormatError(f"not a readable tar stream: {exc}") from exc
        ex.finish()
    finally:
        ex.close()
    return ExtractResult(ex.count, ex.content_bytes, tuple(ex.skipped))
