"""Compare two directory trees on disk, the way the zero-diff invariant means it.

``diff_trees(a, b)`` walks both trees without following symlinks and returns
one readable line per difference: the set of paths (bytes), entry type,
content (streamed sha256), permission bits incl. setuid/setgid/sticky,
uid/gid, kept xattrs, symlink targets, device numbers, hardlink sets and
mtimes.  ``assert_trees_equal(a, b)`` fails with the first 50 lines.

xattr policy (the project's): keep ``security.capability``,
``system.posix_acl_*`` and ``user.*``; everything else (``security.selinux``,
``trusted.*``, ...) is not compared.  ``dropped_xattrs(tree)`` lists the ones
that a round trip must have removed, for tests that check that.

mtimes are compared in whole seconds (tar headers carry seconds).  With
``mtime_clamp=C``, b's mtime must equal ``min(a's mtime, C)``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

KEPT_XATTR_EXACT = ("security.capability",)
KEPT_XATTR_PREFIXES = ("user.", "system.posix_acl_")

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def xattr_is_kept(name: str) -> bool:
    """True for xattrs that survive a round trip under the project's policy."""
    return name in KEPT_XATTR_EXACT or name.startswith(KEPT_XATTR_PREFIXES)


@dataclass(frozen=True)
class Entry:
    """What is compared about one path (content hashed lazily)."""

    path: bytes  # relative, b"." for the root
    abspath: bytes
    fmt: int
    perm: int  # S_IMODE: permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    mtime: int  # whole seconds
    rdev: int
    inode: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]  # kept ones only, sorted
    link_target: bytes | None

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.fmt, f"type {self.fmt:o}")


def show(path: bytes) -> str:
    """A path as one readable line: UTF-8 as is, anything else escaped."""
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return repr(path)[2:-1]
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        return repr(text)[1:-1]
    return text


def _kept_xattrs(abspath: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(abspath, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in names:
        if xattr_is_kept(name):
            try:
                out.append((name, os.getxattr(abspath, name, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(sorted(out))


def _entry(root: bytes, rel: bytes) -> Entry:
    abspath = root if rel == b"." else os.path.join(root, rel)
    st = os.lstat(abspath)
    fmt = stat.S_IFMT(st.st_mode)
    return Entry(
        path=rel,
        abspath=abspath,
        fmt=fmt,
        perm=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        mtime=st.st_mtime_ns // 10**9,
        rdev=st.st_rdev,
        inode=(st.st_dev, st.st_ino),
        xattrs=_kept_xattrs(abspath),
        link_target=os.readlink(abspath) if fmt == stat.S_IFLNK else None,
    )


def _ignored(rel: bytes, patterns: tuple[bytes, ...]) -> bool:
    for pat in patterns:
        if rel == pat or rel.startswith(pat + b"/") or fnmatch.fnmatchcase(rel, pat):
            return True
    return False


def scan_tree(
    root: str | os.PathLike[str] | bytes, ignore: Iterable[str | bytes] = ()
) -> dict[bytes, Entry]:
    """Every entry under *root* (and the root as ``b"."``), symlinks not followed.

    *ignore*: relative paths (their whole subtree is skipped) or fnmatch patterns.
    """
    broot = os.fsencode(root)
    if isinstance(ignore, str | bytes):  # one pattern, not its characters
        ignore = (ignore,)
    patterns = tuple(os.fsencode(p).rstrip(b"/") for p in ignore)
    if not os.path.isdir(broot) or os.path.islink(broot):
        raise NotADirectoryError(f"not a directory: {os.fsdecode(broot)}")
    entries: dict[bytes, Entry] = {}
    if not _ignored(b".", patterns):
        entries[b"."] = _entry(broot, b".")
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(broot, rel_dir) if rel_dir else broot) as it:
            for de in it:
                rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
                if _ignored(rel, patterns):
                    continue
                e = _entry(broot, rel)
                entries[rel] = e
                if e.fmt == stat.S_IFDIR:
                    stack.append(rel)
    return entries


def file_sha256(path: bytes) -> str:
    """sha256 of a file's content, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hardlink_sets(entries: dict[bytes, Entry]) -> dict[bytes, frozenset[bytes]]:
    """For every non-directory path: the paths sharing its inode (itself included)."""
    groups: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for rel, e in entries.items():
        if e.fmt != stat.S_IFDIR:
            groups[e.inode].add(rel)
    return {rel: frozenset(g) for g in groups.values() for rel in g}


def _fmt_set(paths: frozenset[bytes]) -> str:
    return "{" + ", ".join(show(p) for p in sorted(paths)) + "}"


def _fmt_xattrs(x: tuple[tuple[str, bytes], ...]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in x) + "}"


def diff_trees(
    a: str | os.PathLike[str] | bytes,
    b: str | os.PathLike[str] | bytes,
    *,
    mtime_clamp: int | Mapping[bytes, int | None] | None = None,
    ignore: Iterable[str | bytes] = (),
    check_mtime: bool = True,
    check_dir_mtime: bool = True,
    check_owner: bool = True,
    check_xattrs: bool = True,
) -> list[str]:
    """Differences between tree *a* (the source) and tree *b* (the copy); [] if equal.

    - *mtime_clamp*: b's mtime must be ``min(a's, clamp)`` (else equal to a's); a
      mapping gives a clamp per relative path (bytes), for per-component clamps.
    - *ignore*: relative paths (whole subtrees) or fnmatch patterns, on both sides;
      ``"."`` skips the root directory's own metadata.
    - *check_dir_mtime=False*: directories' mtimes are not compared (extractors
      touch them); *check_mtime=False* compares no mtimes at all.
    - *check_owner=False*: for rootless extractions.
    Symlinks' own mtimes are compared like any entry's.
    """
    ea = scan_tree(a, ignore)
    eb = scan_tree(b, ignore)
    out: list[tuple[bytes, str]] = []

    for rel in sorted(ea.keys() - eb.keys()):
        out.append((rel, f"only in a: {show(rel)} ({ea[rel].type_name})"))
    for rel in sorted(eb.keys() - ea.keys()):
        out.append((rel, f"only in b: {show(rel)} ({eb[rel].type_name})"))

    common = sorted(ea.keys() & eb.keys())
    for rel in common:
        x, y = ea[rel], eb[rel]
        p = show(rel)
        if x.fmt != y.fmt:
            out.append((rel, f"type differs for {p}: {x.type_name} != {y.type_name}"))
            continue
        if x.perm != y.perm:
            out.append((rel, f"mode differs for {p}: {x.perm:#o} != {y.perm:#o}"))
        if check_owner and (x.uid, x.gid) != (y.uid, y.gid):
            out.append((rel, f"owner differs for {p}: {x.uid}:{x.gid} != {y.uid}:{y.gid}"))
        if check_xattrs and x.xattrs != y.xattrs:
            out.append(
                (rel, f"xattrs differ for {p}: {_fmt_xattrs(x.xattrs)} != {_fmt_xattrs(y.xattrs)}")
            )
        if x.fmt == stat.S_IFREG:
            if x.size != y.size:
                out.append((rel, f"size differs for {p}: {x.size} != {y.size}"))
            else:
                ha, hb = file_sha256(x.abspath), file_sha256(y.abspath)
                if ha != hb:
                    out.append((rel, f"content differs for {p}: sha256 {ha[:16]}… != {hb[:16]}…"))
        elif x.fmt == stat.S_IFLNK:
            if x.link_target != y.link_target:
                assert x.link_target is not None and y.link_target is not None
                out.append(
                    (
                        rel,
                        f"symlink target differs for {p}: "
                        f"{show(x.link_target)} != {show(y.link_target)}",
                    )
                )
        elif x.fmt in (stat.S_IFCHR, stat.S_IFBLK) and x.rdev != y.rdev:
            out.append(
                (
                    rel,
                    f"device differs for {p}: {os.major(x.rdev)},{os.minor(x.rdev)} != "
                    f"{os.major(y.rdev)},{os.minor(y.rdev)}",
                )
            )
        if check_mtime and (check_dir_mtime or x.fmt != stat.S_IFDIR):
            clamp = mtime_clamp.get(rel) if isinstance(mtime_clamp, Mapping) else mtime_clamp
            want = x.mtime if clamp is None else min(x.mtime, clamp)
            if y.mtime != want:
                if clamp is None:
                    msg = f"mtime differs for {p}: {x.mtime} != {y.mtime}"
                else:
                    msg = (
                        f"mtime differs for {p}: b has {y.mtime}, "
                        f"want min({x.mtime}, clamp {clamp}) = {want}"
                    )
                out.append((rel, msg))

    # Hardlinks: the paths grouped by inode must form the same partition on both sides.
    la, lb = _hardlink_sets(ea), _hardlink_sets(eb)
    reported: set[tuple[frozenset[bytes], frozenset[bytes]]] = set()
    for rel in common:
        if rel not in la or rel not in lb:
            continue
        sa, sb = la[rel], lb[rel]
        if sa != sb and (sa, sb) not in reported:
            reported.add((sa, sb))
            out.append(
                (rel, f"hardlink set differs for {show(rel)}: {_fmt_set(sa)} != {_fmt_set(sb)}")
            )

    out.sort(key=lambda item: item[0])
    return [line for _, line in out]


def assert_trees_equal(
    a: str | os.PathLike[str] | bytes, b: str | os.PathLike[str] | bytes, **kw: object
) -> None:
    """Fail with the first 50 differences (see ``diff_trees`` for the options)."""
    diffs = diff_trees(a, b, **kw)  # type: ignore[arg-type]
    if diffs:
        shown = "\n".join(diffs[:50])
        more = f"\n... and {len(diffs) - 50} more" if len(diffs) > 50 else ""
        raise AssertionError(
            f"{len(diffs)} difference(s) between {os.fsdecode(a)} and {os.fsdecode(b)}:\n"
            f"{shown}{more}"
        )


def dropped_xattrs(root: str | os.PathLike[str] | bytes) -> dict[bytes, list[str]]:
    """xattrs in *root* that the policy drops (e.g. to assert a copy has none)."""
    out: dict[bytes, list[str]] = {}
    for rel, e in scan_tree(root).items():
        try:
            names = os.listxattr(e.abspath, follow_symlinks=False)
        except OSError:
            continue
        dropped = sorted(n for n in names if not xattr_is_kept(n))
        if dropped:
            out[rel] = dropped
    return out
