"""A hand-made tree with every entry type a filesystem image can carry.

``make_handmade_tree(path)`` creates it and returns a ``HandmadeTree`` that
lists what was made (paths are bytes, relative to the root).  As root it also
makes device nodes, foreign owners (uid 1234, gid 5678), ``security.capability``
and the xattrs the project drops (``trusted.*``, ``security.selinux``); without
root those are skipped and listed in ``skipped``.

Everything is deterministic: file content comes from a fixed seed, and mtimes
are fixed per entry, some before and some after ``CLAMP`` (so a clamp rule has
something to clamp).  ext4 (``/tmp`` and ``/work`` here) supports every xattr
namespace used; ``xattr_support(dir)`` probes another filesystem.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: An mtime clamp between the "old" and "new" mtimes used below.
CLAMP = 1_700_000_000
OLD_MTIME = 1_600_000_000  # below CLAMP: unchanged by a clamp
NEW_MTIME = 1_800_000_000  # above CLAMP: a clamp lowers it to CLAMP

OWNER_UID = 1234
OWNER_GID = 5678

# VFS capability v2 for cap_net_bind_service (bit 10) permitted+effective.
CAPABILITY_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")

SEED = 20240611


@dataclass
class HandmadeTree:
    """What ``make_handmade_tree`` made; every path is relative bytes."""

    root: Path
    files: list[bytes] = field(default_factory=list)
    dirs: list[bytes] = field(default_factory=list)
    symlinks: dict[bytes, bytes] = field(default_factory=dict)  # path -> target
    hardlink_groups: list[list[bytes]] = field(default_factory=list)
    fifos: list[bytes] = field(default_factory=list)
    char_devices: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    block_devices: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    modes: dict[bytes, int] = field(default_factory=dict)  # odd permission bits only
    owners: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # non-root owners
    kept_xattrs: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    dropped_xattrs: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    mtimes: dict[bytes, int] = field(default_factory=dict)
    long_names: list[bytes] = field(default_factory=list)  # a component > 100 bytes
    long_paths: list[bytes] = field(default_factory=list)  # the whole path > 255 bytes
    non_utf8: list[bytes] = field(default_factory=list)
    odd_names: list[bytes] = field(default_factory=list)  # spaces, newlines
    skipped: list[str] = field(default_factory=list)  # what could not be made, and why

    def all_paths(self) -> list[bytes]:
        """Every entry made (not the root itself), sorted."""
        return sorted(self.mtimes)

    def abspath(self, rel: bytes) -> bytes:
        return os.path.join(os.fsencode(self.root), rel)


def xattr_support(directory: str | os.PathLike[str]) -> dict[str, bool]:
    """Which xattrs a regular file in *directory* accepts (probed, then removed)."""
    probe = os.path.join(os.fspath(directory), f".xattr-probe-{os.getpid()}")
    result = {}
    with open(probe, "wb"):
        pass
    try:
        for name, value in (
            ("user.probe", b"1"),
            ("trusted.probe", b"1"),
            ("security.selinux", b"system_u:object_r:etc_t:s0\0"),
            ("security.capability", CAPABILITY_NET_BIND),
        ):
            try:
                os.setxattr(probe, name, value)
                result[name] = True
            except OSError:
                result[name] = False
    finally:
        os.unlink(probe)
    return result


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


class _Maker:
    def __init__(self, root: Path, is_root: bool) -> None:
        self.t = HandmadeTree(root=root)
        self.root = os.fsencode(root)
        self.is_root = is_root
        self.rng = random.Random(SEED)
        self.mtime_counter = 0

    def p(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel)

    def _mtime(self) -> int:
        # Alternate below/above the clamp, with distinct values for each entry.
        self.mtime_counter += 1
        base = NEW_MTIME if self.mtime_counter % 3 == 0 else OLD_MTIME
        return base + self.mtime_counter * 61

    def dir(self, rel: bytes, mode: int = 0o755) -> None:
        os.mkdir(self.p(rel))
        os.chmod(self.p(rel), mode)
        self.t.dirs.append(rel)
        if mode != 0o755:
            self.t.modes[rel] = mode
        self.t.mtimes[rel] = self._mtime()

    def file(self, rel: bytes, data: bytes, mode: int = 0o644) -> None:
        with open(self.p(rel), "wb") as f:
            f.write(data)
        os.chmod(self.p(rel), mode)
        self.t.files.append(rel)
        if mode != 0o644:
            self.t.modes[rel] = mode
        self.t.mtimes[rel] = self._mtime()

    def symlink(self, rel: bytes, target: bytes) -> None:
        os.symlink(target, self.p(rel))
        self.t.symlinks[rel] = target
        self.t.mtimes[rel] = self._mtime()

    def hardlinks(self, first: bytes, others: Iterable[bytes]) -> None:
        group = [first]
        for rel in others:
            os.link(self.p(first), self.p(rel))
            group.append(rel)
            self.t.files.append(rel)
            self.t.mtimes[rel] = self.t.mtimes[first]
        self.t.hardlink_groups.append(group)

    def chown(self, rel: bytes, uid: int, gid: int) -> None:
        if not self.is_root:
            self.t.skipped.append(f"owner {uid}:{gid} on {rel!r}: not root")
            return
        os.chown(self.p(rel), uid, gid, follow_symlinks=False)
        self.t.owners[rel] = (uid, gid)

    def xattr(self, rel: bytes, name: str, value: bytes, *, kept: bool) -> None:
        try:
            os.setxattr(self.p(rel), name, value, follow_symlinks=False)
        except OSError as exc:
            self.t.skipped.append(
                f"xattr {name} on {rel!r}: {errno.errorcode.get(exc.errno or 0, str(exc))}"
            )
            return
        target = self.t.kept_xattrs if kept else self.t.dropped_xattrs
        target.setdefault(rel, {})[name] = value


def make_handmade_tree(path: str | os.PathLike[str]) -> HandmadeTree:
    """Create the tree in *path* (created if missing, must be empty) and describe it."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"{root} is not empty")
    is_root = os.geteuid() == 0
    m = _Maker(root, is_root)
    t = m.t

    # Regular files: empty, small, large (> 1 MiB, incompressible, seeded).
    m.dir(b"files")
    m.file(b"files/empty", b"")
    m.file(b"files/small.txt", b"hello, chunkah\n")
    m.file(b"files/large.bin", _random_bytes(m.rng, 1024 * 1024 + 12345))
    m.file(b"files/exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    m.file(b"files/readonly", b"r\n", 0o400)

    # Directories with odd modes.
    m.dir(b"private", 0o700)
    m.file(b"private/secret", b"s\n", 0o600)
    m.dir(b"sticky", 0o1777)
    m.file(b"sticky/tmpfile", b"t\n")

    # setuid / setgid / both, and a setgid directory.
    m.dir(b"bin")
    m.file(b"bin/suid", b"\x7fELF-ish suid\n", 0o4755)
    m.file(b"bin/sgid", b"\x7fELF-ish sgid\n", 0o2755)
    m.file(b"bin/suid-sgid", b"\x7fELF-ish both\n", 0o6711)
    m.dir(b"shared", 0o2775)

    # Symlinks: relative, absolute, dangling, to a directory, a long target.
    m.dir(b"links")
    m.symlink(b"links/relative", b"../files/small.txt")
    m.symlink(b"links/absolute", b"/files/small.txt")
    m.symlink(b"links/dangling", b"../does/not/exist")
    m.symlink(b"links/to-dir", b"../files")
    m.symlink(b"links/long-target", b"../" + b"x" * 150)

    # Hardlinks across directories: a group of 3 and an (empty) group of 2.
    m.dir(b"hl-a")
    m.dir(b"hl-b")
    m.dir(b"hl-b/sub")
    m.file(b"hl-a/one", b"linked content\n" * 100, 0o640)
    m.hardlinks(b"hl-a/one", [b"hl-b/two", b"hl-b/sub/three"])
    m.file(b"hl-a/empty-1", b"")
    m.hardlinks(b"hl-a/empty-1", [b"hl-b/empty-2"])

    # A fifo; char and block devices (root only).
    m.dir(b"special")
    os.mkfifo(m.p(b"special/fifo"), 0o644)
    os.chmod(m.p(b"special/fifo"), 0o644)
    t.fifos.append(b"special/fifo")
    t.mtimes[b"special/fifo"] = m._mtime()
    if is_root:
        for rel, kind, dev, table in (
            (b"special/null", stat.S_IFCHR, (1, 3), t.char_devices),
            (b"special/tty5", stat.S_IFCHR, (4, 5), t.char_devices),
            (b"special/loop7", stat.S_IFBLK, (7, 7), t.block_devices),
        ):
            os.mknod(m.p(rel), kind | 0o660, os.makedev(*dev))
            os.chmod(m.p(rel), 0o660)
            table[rel] = dev
            t.modes[rel] = 0o660
            t.mtimes[rel] = m._mtime()
    else:
        t.skipped.append("char/block devices: not root")

    # Long and odd names.
    long_name = b"n" * 150
    m.dir(b"names")
    m.file(b"names/" + long_name, b"long name\n")
    t.long_names.append(b"names/" + long_name)
    deep = b"names"
    for i in range(5):
        deep += b"/" + (b"%d" % i) * 60
        m.dir(deep)
    m.file(deep + b"/deep-file", b"deep\n")
    m.symlink(deep + b"/deep-link", b"deep-file")
    t.long_paths += [deep, deep + b"/deep-file", deep + b"/deep-link"]
    m.file(deep + b"/deep-hardlink-src", b"deep hardlink\n")
    m.hardlinks(deep + b"/deep-hardlink-src", [b"names/" + b"h" * 120])
    t.long_paths.append(deep + b"/deep-hardlink-src")
    t.long_names.append(b"names/" + b"h" * 120)
    for odd in (b"caf\xe9", b"\xff\xfe-bytes", "café-utf8".encode()):
        m.file(b"names/" + odd, odd + b"\n")
    m.dir(b"names/dir-\xe9")
    t.non_utf8 += [b"names/caf\xe9", b"names/\xff\xfe-bytes", b"names/dir-\xe9"]
    for odd in (b"with space", b"with\nnewline", b" leading-space", b"tab\there"):
        m.file(b"names/" + odd, b"odd\n")
        t.odd_names.append(b"names/" + odd)

    # Foreign owners (after chmod: chown clears setuid, so the setuid file is re-chmodded).
    m.dir(b"owned")
    m.file(b"owned/file", b"owned\n")
    m.file(b"owned/suid", b"owned suid\n", 0o4750)
    m.symlink(b"owned/link", b"file")
    for rel in (b"owned", b"owned/file", b"owned/suid", b"owned/link"):
        m.chown(rel, OWNER_UID, OWNER_GID)
    os.chmod(m.p(b"owned/suid"), 0o4750)
    m.chown(b"files/readonly", 0, OWNER_GID)

    # xattrs: kept ones, and the ones the project drops.  security.capability last
    # on its file: a later write or chown would clear it.
    m.dir(b"xattrs")
    m.file(b"xattrs/user", b"x\n")
    m.xattr(b"xattrs/user", "user.component", b"chunkah-test", kept=True)
    m.xattr(b"xattrs/user", "user.binary", bytes(range(256)), kept=True)
    m.xattr(b"xattrs", "user.on-dir", b"d", kept=True)
    m.file(b"xattrs/cap", b"\x7fELF-ish cap\n", 0o755)
    if is_root:
        m.xattr(b"xattrs/cap", "security.capability", CAPABILITY_NET_BIND, kept=True)
        m.file(b"xattrs/dropped", b"d\n")
        m.xattr(b"xattrs/dropped", "trusted.overlay.opaque", b"y", kept=False)
        m.xattr(b"xattrs/dropped", "security.selinux", b"system_u:object_r:etc_t:s0\0", kept=False)
        m.xattr(b"xattrs/dropped", "user.kept-next-to-dropped", b"k", kept=True)
    else:
        t.skipped.append("security.capability, trusted.*, security.selinux: not root")

    # Deterministic mtimes, children before parents (creating a child touches its dir).
    for rel in sorted(t.mtimes, key=lambda r: (-r.count(b"/"), r)):
        mt = t.mtimes[rel]
        os.utime(m.p(rel), ns=(mt * 10**9, mt * 10**9), follow_symlinks=False)
    os.utime(root, ns=(OLD_MTIME * 10**9, OLD_MTIME * 10**9))
    return t
