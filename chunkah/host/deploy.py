"""Deploying into a sysroot: commit a staged tree, switch atomically, roll back, collect garbage.

The commit point of an update or a rollback is one ``rename(2)`` of a symlink made
next to ``SYSROOT/current``.  Everything before it is written aside (staging,
then complete directories renamed into place) and fsynced; everything after it is
bookkeeping that a journal lets the next run finish.  docs/sysroot.md has the layout
and the crash analysis.

Helpers for the assembler: :func:`link_or_copy` (share an unchanged file with the
current deployment), :func:`fsync_file` (make a file durable right after writing it),
:func:`fsync_tree` (the walk the commit does when files were not synced one by one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from chunkah.errors import ChunkahError, StateError
from chunkah.host.etcmerge import EtcMerge, Source, merge_etc, scan_listing
from chunkah.host.sysroot import (
    Deployment,
    DeploymentMetadata,
    Sysroot,
    digest_hex,
    disk_full_error,
    fsync_dir,
    is_disk_full,
    remove_tree,
    sync_filesystem,
    utc_now,
    write_file_atomic,
)
from chunkah.tree.model import keep_xattr

__all__ = [
    "CRASH_ENV",
    "CRASH_LOG_ENV",
    "GcReport",
    "apply_dir_metadata",
    "chunkah_toc_chunks",
    "collect_garbage",
    "commit_deployment",
    "copy_entry",
    "copy_tree",
    "crash_point",
    "fsync_file",
    "fsync_tree",
    "link_or_copy",
    "rollback",
    "write_merged_etc",
]

#: Tests set this to a checkpoint name to make the process ``os._exit(CRASH_EXIT)``
#: there, which is what kill -9 does at that moment (no cleanup, no flush).
CRASH_ENV = "CHUNKAH_TEST_CRASH_AT"
CRASH_EXIT = 137
CHECKPOINTS = (
    "synced",  # staged tree fsynced
    "tocs-stored",  # TOC blobs in cache/tocs
    "etc-merged",  # merged /etc written in staging
    "var-created",  # first /var copied in staging
    "recorded",  # deployment.json written, tree moved under the staging deploy dir
    "moved",  # state/etc/<id> and deployments/<id> renamed into place
    "journaled",  # switch.json written
    "switched",  # SYSROOT/current renamed: the commit point is behind us
    "finalized",  # previous updated, journal removed
)


#: Tests set this to a file: every checkpoint passed appends ``<n> <name>``, so a test
#: can enumerate a clean run's checkpoints and then crash at each (``#<n>``).
CRASH_LOG_ENV = "CHUNKAH_TEST_CRASH_LOG"
_crash_hits = 0
_crash_names: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here as kill -9 would (no cleanup, no flush) when a test asks for it.

    ``CHUNKAH_TEST_CRASH_AT=<name>`` dies at the first checkpoint of that name,
    ``<name>#<k>`` at its k-th pass, ``#<n>`` at the n-th checkpoint this process passes
    whatever its name (fetch, assemble, fsync, switch): deterministic crash sweeps.
    """
    at = os.environ.get(CRASH_ENV)
    log = os.environ.get(CRASH_LOG_ENV)
    if at is None and log is None:
        return
    global _crash_hits
    _crash_hits += 1
    seen = _crash_names[name] = _crash_names.get(name, 0) + 1
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{_crash_hits} {name}#{seen}\n".encode())
        finally:
            os.close(fd)
    if at in (name, f"{name}#{seen}", f"#{_crash_hits}"):
        os._exit(CRASH_EXIT)


# --- durability -------------------------------------------------------------------------


def fsync_file(target: int | str | os.PathLike[str] | bytes) -> None:
    """fsync one file (an open descriptor, or a path opened without following symlinks).

    The assembler calls this as it finishes each file, while the data is still hot;
    then ``commit_deployment(..., files_synced=True)`` only fsyncs directories.
    """
    if isinstance(target, int):
        os.fsync(target)
        return
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path | str, *, files: bool = True) -> None:
    """fsync every regular file (unless ``files=False``) and every directory, one walk.

    Directories are synced after their contents; symlinks and devices are made durable
    by their directory's fsync.  Memory: one stack of directory paths.
    """
    broot = os.fsencode(root)
    stack: list[tuple[bytes, bool]] = [(broot, False)]
    while stack:
        dpath, listed = stack.pop()
        if listed:
            fsync_dir(dpath)
            crash_point("dir-synced")
            continue
        stack.append((dpath, True))
        with os.scandir(dpath) as it:
            for de in it:
                if de.is_dir(follow_symlinks=False):
                    stack.append((de.path, False))
                elif files and de.is_file(follow_symlinks=False):
                    fsync_file(de.path)


# --- copies that keep every piece of metadata ------------------------------------------


def _copy_data(fd_in: int, fd_out: int) -> None:
    try:
        while os.copy_file_range(fd_in, fd_out, 1 << 30) > 0:
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(fd_in, 0, os.SEEK_SET)
    os.lseek(fd_out, 0, os.SEEK_SET)
    os.ftruncate(fd_out, 0)
    while chunk := os.read(fd_in, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd_out, view) :]


def _copy_xattrs(src: bytes, dst: bytes | int) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if not keep_xattr(name):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError:
            continue
        if isinstance(dst, int):
            os.setxattr(dst, name, value)
        else:
            os.setxattr(dst, name, value, follow_symlinks=False)


def copy_entry(src: bytes, dst: bytes, st: os.stat_result, *, sync: bool = False) -> None:
    """Copy one non-directory entry (file, symlink, device, fifo) with its metadata.

    ``dst`` must not exist.  Owner, mode, kept xattrs and mtime are copied; for
    directories use ``mkdir`` + :func:`apply_dir_metadata` (after their contents).
    """
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd_out = os.open(dst, flags, 0o600)
            try:
                _copy_data(fd_in, fd_out)
                os.fchown(fd_out, st.st_uid, st.st_gid)
                os.fchmod(fd_out, stat.S_IMODE(st.st_mode))  # after chown, which clears suid
                _copy_xattrs(src, fd_out)
                os.utime(fd_out, ns=(st.st_mtime_ns, st.st_mtime_ns))
                if sync:
                    os.fsync(fd_out)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        return
    if fmt == stat.S_IFLNK:
        os.symlink(os.readlink(src), dst)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(dst, fmt | 0o600, st.st_rdev)
    elif fmt == stat.S_IFIFO:
        os.mkfifo(dst, 0o600)
    else:
        raise StateError(f"cannot copy {os.fsdecode(src)}: unsupported file type {fmt:o}")
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if fmt != stat.S_IFLNK:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def apply_dir_metadata(src: bytes, dst: bytes, st: os.stat_result) -> None:
    """Owner, mode, kept xattrs and mtime of a directory (call after filling it)."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def link_or_copy(src: str | os.PathLike[str] | bytes, dst: str | os.PathLike[str] | bytes) -> bool:
    """Hardlink ``src`` (a file of the current deployment) at ``dst``; copy if linking fails.

    Returns True if linked.  The link shares the inode, so use it only when the new
    entry's owner, mode, mtime and xattrs equal the old one's, and never change the
    result afterwards (deployments are immutable: write new files and rename).  The
    copy fallback (other filesystem, link count limit) keeps all metadata of ``src``.
    """
    bsrc, bdst = os.fsencode(src), os.fsencode(dst)
    try:
        os.link(bsrc, bdst, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP):
            raise
    copy_entry(bsrc, bdst, os.lstat(bsrc))
    return False


def copy_tree(src: Path, dst: Path, *, sync: bool = True) -> None:
    """Copy a whole tree with all metadata; hardlink groups inside it are kept.

    ``dst`` must not exist.  Never follows symlinks.  Used for the first /var.
    """
    bsrc, bdst = os.fsencode(src), os.fsencode(dst)
    root_st = os.lstat(bsrc)
    os.mkdir(bdst, 0o700)
    dirs: list[tuple[bytes, bytes, os.stat_result]] = [(bsrc, bdst, root_st)]
    links: dict[tuple[int, int], bytes] = {}
    stack = [(bsrc, bdst)]
    while stack:
        s_dir, d_dir = stack.pop()
        with os.scandir(s_dir) as it:
            for de in it:
                st = de.stat(follow_symlinks=False)
                s, d = de.path, os.path.join(d_dir, os.fsencode(de.name))
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(d, 0o700)
                    dirs.append((s, d, st))
                    stack.append((s, d))
                elif stat.S_ISSOCK(st.st_mode):
                    continue
                elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in links:
                        os.link(links[key], d)
                    else:
                        copy_entry(s, d, st, sync=sync)
                        links[key] = d
                else:
                    copy_entry(s, d, st, sync=sync)
    for s, d, st in reversed(dirs):
        apply_dir_metadata(s, d, st)
    if sync:
        fsync_tree(dst, files=False)


def write_merged_etc(
    merge: EtcMerge, *, local_dir: Path | None, new_dir: Path, dest: Path, sync: bool = True
) -> None:
    """Write the merged /etc into ``dest`` (must not exist) from the two source trees.

    Entries are copied (never hardlinked: the administrator edits them in place).
    Hardlink groups are kept among entries that come from the same side.
    """
    bdest = os.fsencode(dest)
    roots = {Source.LOCAL: local_dir, Source.NEW: new_dir}
    dirs: list[tuple[bytes, bytes, os.stat_result]] = []
    links: dict[tuple[Source, int, int], bytes] = {}
    if b"" not in merge.result:
        os.mkdir(bdest, 0o755)  # neither side has an /etc: an empty one
    for rel, side in merge.result.items():
        root = roots[side]
        assert root is not None, "a merge that takes local entries needs local_dir"
        src = os.path.join(os.fsencode(root), rel) if rel else os.fsencode(root)
        dst = os.path.join(bdest, rel) if rel else bdest
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dst, 0o700)
            dirs.append((src, dst, st))
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            key = (side, st.st_dev, st.st_ino)
            if key in links:
                os.link(links[key], dst)
            else:
                copy_entry(src, dst, st, sync=sync)
                links[key] = dst
        else:
            copy_entry(src, dst, st, sync=sync)
    for src, dst, st in reversed(dirs):
        apply_dir_metadata(src, dst, st)
    if sync:
        fsync_tree(dest, files=False)


# --- commit -----------------------------------------------------------------------------


def _resolve_staged(sysroot: Sysroot, staged_tree_dir: Path) -> Path:
    staged = Path(os.path.abspath(staged_tree_dir))
    try:
        st = os.lstat(staged)
    except FileNotFoundError:
        raise StateError(f"staged tree {staged} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"staged tree {staged} is not a directory")
    staging = Path(os.path.realpath(sysroot.staging_dir))
    if Path(os.path.realpath(staged.parent)) != staging:
        raise StateError(
            f"staged tree {staged} must be a directory directly in {staging} "
            "(use sysroot.stage()), so it can be renamed into place"
        )
    return staged


@dataclass
class _Undo:
    """What a failed commit has to take back (only things made by this commit)."""

    paths: list[Path]


def commit_deployment(
    sysroot: Sysroot,
    staged_tree_dir: Path,
    metadata: DeploymentMetadata,
    *,
    files_synced: bool = False,
) -> Deployment:
    """Make ``staged_tree_dir`` the current deployment, atomically; needs the lock.

    ``staged_tree_dir`` is a directory directly in ``SYSROOT/staging`` (from
    ``sysroot.stage()``) holding exactly the image's tree; it is consumed.  Steps:
    fsync the tree (files too unless ``files_synced``), store the TOCs, merge /etc
    (old image, administrator's /etc, new image) into ``state/etc/<id>``, create
    ``state/var`` from the image on the very first deployment, record
    ``deployment.json``, rename into ``deployments/<id>``, then switch ``current``
    with one rename -- the commit point -- and make the old current ``previous``.

    On any failure before the commit point everything this call made is removed and
    ``current`` is untouched; a full disk raises StateError.  Garbage collection is
    separate: call :func:`collect_garbage` afterwards.
    """
    sysroot.require_lock("committing a deployment")
    staged = _resolve_staged(sysroot, staged_tree_dir)
    old = sysroot.current()
    new_id = sysroot.next_deployment_id(metadata.manifest_digest)
    work = sysroot.staging_dir / f"deploy-{new_id}"
    dep_dir = sysroot.deployment_path(new_id)
    etc_dir = sysroot.etc_dir(new_id)
    undo = _Undo(paths=[staged, work])
    doing = "preparing the deployment"
    try:
        work.mkdir(mode=0o755)
        doing = "syncing the staged tree"
        if files_synced:
            fsync_tree(staged, files=False)
        else:
            # One syncfs(2) instead of an fsync per file and directory: thousands of
            # journal commits on ext4 cost seconds; the commit point only needs all
            # of it durable before the switch.
            sync_filesystem(staged)
        crash_point("synced")

        doing = "storing TOCs"
        for digest, blob in metadata.tocs.items():
            sysroot.toc_put(digest, blob)
        crash_point("tocs-stored")

        doing = "merging /etc"
        merge, merged_from = _merge_etc(sysroot, old, staged / "etc")
        write_merged_etc(
            merge,
            local_dir=sysroot.etc_dir(old.id) if old and merged_from else None,
            new_dir=staged / "etc",
            dest=work / "etc",
        )
        crash_point("etc-merged")

        new_var = not os.path.lexists(sysroot.var_dir)
        if new_var:
            doing = "creating /var"
            image_var = staged / "var"
            if image_var.is_dir() and not image_var.is_symlink():
                copy_tree(image_var, work / "var")
            else:
                (work / "var").mkdir(mode=0o755)
        crash_point("var-created")

        doing = "recording the deployment"
        deployment = Deployment(
            id=new_id,
            path=dep_dir,
            image_ref=metadata.image_ref,
            manifest_digest=metadata.manifest_digest,
            config_digest=metadata.config_digest,
            created=utc_now(),
            layers=metadata.layers,
            etc_merged_from=merged_from,
            etc_conflicts=merge.conflicts,
            extra=metadata.extra,
        )
        (work / "dep").mkdir(mode=0o755)
        os.rename(staged, work / "dep" / "root")
        doc = json.dumps(deployment.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        write_file_atomic(work / "dep" / "deployment.json", doc)
        fsync_dir(work)
        crash_point("recorded")

        doing = "moving the deployment into place"
        undo.paths += [etc_dir, dep_dir]
        os.rename(work / "etc", etc_dir)
        fsync_dir(etc_dir.parent)
        if new_var:
            undo.paths.append(sysroot.var_dir)
            os.rename(work / "var", sysroot.var_dir)
            fsync_dir(sysroot.state_dir)
        os.rename(work / "dep", dep_dir)
        fsync_dir(sysroot.deployments_dir)
        crash_point("moved")

        doing = "switching to the new deployment"
        undo.paths.append(sysroot.journal_path)
        sysroot.write_journal(old.id if old else None, new_id)
        crash_point("journaled")
        sysroot.replace_symlink("current", new_id, sync=False)  # the commit point
    except BaseException as exc:
        _take_back(sysroot, undo, new_id)
        if is_disk_full(exc):
            assert isinstance(exc, OSError)
            raise disk_full_error(sysroot.path, doing, exc) from exc
        if isinstance(exc, OSError):
            raise StateError(f"{doing} failed: {exc}; the current deployment is unchanged") from exc
        raise
    # After the commit point: bookkeeping the journal lets the next run finish.
    with contextlib.suppress(OSError):
        fsync_dir(sysroot.path)
    crash_point("switched")
    with contextlib.suppress(OSError, StateError):
        sysroot.finish_switch()
        remove_tree(work)
    crash_point("finalized")
    return deployment


def _take_back(sysroot: Sysroot, undo: _Undo, new_id: str) -> None:
    """Remove what a failed commit made; leave ``current`` alone (it was never switched)."""
    with contextlib.suppress(OSError, StateError):
        if sysroot.pointers().current == new_id:
            return  # cannot happen before the rename; never remove the current tree
    for path in reversed(undo.paths):
        with contextlib.suppress(OSError):
            remove_tree(path)
    with contextlib.suppress(OSError):
        fsync_dir(sysroot.path)


def _merge_etc(
    sysroot: Sysroot, old: Deployment | None, new_etc: Path
) -> tuple[EtcMerge, str | None]:
    """The merge decision and the deployment whose /etc state it started from."""
    new = scan_listing(new_etc)
    if old is None:
        return merge_etc({}, {}, new), None
    local_dir = sysroot.etc_dir(old.id)
    base = scan_listing(old.root / "etc")
    if not local_dir.is_dir():
        # No /etc state for the old deployment (a sysroot made by hand): nothing to keep.
        return merge_etc({}, {}, new), None
    return merge_etc(base, scan_listing(local_dir), new), old.id


# --- rollback -----------------------------------------------------------------------------


def rollback(sysroot: Sysroot, *, wait: float | None = None) -> Deployment:
    """Swap current and previous with one rename; returns the new current.

    Takes the lock (or reuses the caller's).  The /etc state goes with the
    deployment: ``state/etc/<id>`` is kept per deployment, so edits made under the
    rolled-back-from deployment stay with it (and come back on a roll forward).
    """
    with sysroot.lock(wait):
        ptr = sysroot.pointers()
        if ptr.current is None:
            raise StateError(f"{sysroot.path} has no deployment yet; nothing to roll back")
        if ptr.previous is None:
            raise StateError(f"{sysroot.path} has no previous deployment to roll back to")
        target = sysroot.deployment(ptr.previous)
        if not target.root.is_dir():
            raise StateError(f"previous deployment {target.id} has no tree at {target.root}")
        try:
            sysroot.write_journal(ptr.current, target.id)
            crash_point("journaled")
            sysroot.replace_symlink("current", target.id, sync=False)  # the commit point
        except OSError as exc:
            with contextlib.suppress(OSError):
                if sysroot.pointers().current == ptr.current:
                    os.unlink(sysroot.journal_path)
            if is_disk_full(exc):
                raise disk_full_error(sysroot.path, "rolling back", exc) from exc
            raise StateError(f"rollback failed: {exc}; nothing was changed") from exc
        with contextlib.suppress(OSError):
            fsync_dir(sysroot.path)
        crash_point("switched")
        with contextlib.suppress(OSError, StateError):
            sysroot.finish_switch()
        return target


# --- garbage collection ---------------------------------------------------------------


@dataclass(frozen=True)
class GcReport:
    """What :func:`collect_garbage` removed."""

    deployments_removed: tuple[str, ...]
    etc_states_removed: tuple[str, ...]
    tocs_removed: int
    chunks_removed: int
    bytes_freed: int
    chunks_kept_reason: str | None  # why unreferenced chunks were not removed, if so

    def to_json(self) -> dict[str, Any]:
        return {
            "deployments_removed": list(self.deployments_removed),
            "etc_states_removed": list(self.etc_states_removed),
            "tocs_removed": self.tocs_removed,
            "chunks_removed": self.chunks_removed,
            "bytes_freed": self.bytes_freed,
            "chunks_kept_reason": self.chunks_kept_reason,
        }


_SKIPPABLE = 0x184D2A5C


def chunkah_toc_chunks(path: Path) -> Iterator[bytes]:
    """sha256 of every chunk a stored chunkah TOC blob (a zstd skippable frame) lists."""
    from chunkah.format.toc import MAX_BODY, parse_body

    data = path.read_bytes()
    if len(data) < 8 or int.from_bytes(data[:4], "little") != _SKIPPABLE:
        raise StateError(f"{path} is not a chunkah TOC frame")
    try:
        body = zstandard.ZstdDecompressor().decompress(data[8:], max_output_size=MAX_BODY)
    except zstandard.ZstdError as exc:
        raise StateError(f"{path}: TOC does not decompress: {exc}") from exc
    toc = parse_body(body)
    for raw in toc.chunks["sha256"]:
        yield bytes(raw)


def collect_garbage(
    sysroot: Sysroot,
    *,
    chunk_refs: Callable[[Path, str], Iterable[bytes]] | None = None,
    keep_chunks: Iterable[bytes] = (),
) -> GcReport:
    """Keep current and previous; remove older deployments, their /etc state, TOCs no
    kept deployment names, and cached chunks that no kept TOC lists.  Needs the lock.

    ``chunk_refs(toc_file, toc_format)`` yields the raw sha256s a TOC references (default:
    chunkah TOCs are parsed; other formats keep all chunks, reported in
    ``chunks_kept_reason``).  ``keep_chunks`` protects more chunks (e.g. a download in
    progress).  Call it after a commit, not between fetching and committing.
    """
    sysroot.require_lock("garbage collection")
    ptr = sysroot.pointers()
    keep_ids = {i for i in (ptr.current, ptr.previous) if i}
    freed = 0
    removed: list[str] = []
    for dep_id in sysroot.deployment_ids():
        if dep_id not in keep_ids:
            freed += remove_tree(sysroot.deployment_path(dep_id))
            removed.append(dep_id)
    etc_removed: list[str] = []
    etc_root = sysroot.state_dir / "etc"
    if etc_root.is_dir():
        with os.scandir(etc_root) as it:
            names = [de.name for de in it]
        for name in sorted(names):
            if name not in keep_ids:
                freed += remove_tree(etc_root / name)
                etc_removed.append(name)
    if removed or etc_removed:
        fsync_dir(sysroot.deployments_dir)

    # TOCs named by kept deployments.
    kept_tocs: dict[str, str] = {}
    for dep_id in sorted(keep_ids):
        for layer in sysroot.deployment(dep_id).layers:
            if layer.toc_digest:
                kept_tocs[digest_hex(layer.toc_digest)] = layer.toc_format
    toc_dir = sysroot.cache_dir / "tocs" / "sha256"
    tocs_removed = 0
    with os.scandir(toc_dir) as it:
        toc_names = [de.name for de in it]
    for name in toc_names:
        if name not in kept_tocs:
            freed += remove_tree(toc_dir / name)
            tocs_removed += 1

    # Chunks listed by kept TOCs (an in-memory set of 32-byte digests: the index).
    referenced: set[bytes] = {bytes(c) for c in keep_chunks}
    reason: str | None = None
    for hx, fmt in sorted(kept_tocs.items()):
        path = toc_dir / hx
        if not path.is_file():
            reason = f"TOC sha256:{hx} of a kept deployment is missing from the cache"
            break
        try:
            if chunk_refs is not None:
                referenced.update(chunk_refs(path, fmt))
            elif fmt in ("", "chunkah"):
                referenced.update(chunkah_toc_chunks(path))
            else:
                reason = f"no chunk lister for TOC format {fmt!r}"
                break
        except ChunkahError as exc:
            reason = f"cannot read TOC sha256:{hx}: {exc}"
            break
    chunks_removed = 0
    if reason is None:
        chunk_root = sysroot.cache_dir / "chunks" / "sha256"
        with os.scandir(chunk_root) as fan:
            fanout = [de.path for de in fan if de.is_dir(follow_symlinks=False)]
        for sub in fanout:
            with os.scandir(sub) as it:
                for de in it:
                    try:
                        raw = bytes.fromhex(de.name)
                    except ValueError:
                        continue
                    if raw not in referenced:
                        freed += remove_tree(de.path)
                        chunks_removed += 1
    return GcReport(
        deployments_removed=tuple(removed),
        etc_states_removed=tuple(etc_removed),
        tocs_removed=tocs_removed,
        chunks_removed=chunks_removed,
        bytes_freed=freed,
        chunks_kept_reason=reason,
    )
