"""The cached Debian root filesystems are real, complete and shared safely."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

from support import debian
from support.treediff import assert_trees_equal


def test_tiny_rootfs(debian_tiny_rootfs: debian.DebianRootfs) -> None:
    r = debian_tiny_rootfs
    root = r.path
    assert r.recipe == debian.TINY
    assert {"dash", "bash", "coreutils", "dpkg", "openssl", "usr-is-merged"} <= set(r.packages)
    assert os.readlink(root / "bin") == "usr/bin"  # merged /usr
    assert (root / "usr/bin/dash").is_file()
    assert not (root / "usr/share/man").exists() or not any((root / "usr/share/man").iterdir())
    # dev/ is kept but empty; proc/ and sys/ are kept as directories.
    assert (root / "dev").is_dir() and list((root / "dev").iterdir()) == []
    assert (root / "proc").is_dir() and (root / "sys").is_dir()
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    # Extracted as root: real owners and setgid bits.
    mail = os.lstat(root / "var/mail")
    assert mail.st_gid == 8 and mail.st_mode & stat.S_ISGID  # group "mail"
    # Reproducible: SOURCE_DATE_EPOCH is the newest mtime in the tree.
    assert os.lstat(root / "etc/hostname").st_mtime <= debian.SOURCE_DATE_EPOCH
    assert r.tar.is_file() and r.tar.stat().st_size > 10 * 1024 * 1024


def test_minbase_rootfs(debian_minbase_rootfs: debian.DebianRootfs) -> None:
    r = debian_minbase_rootfs
    assert {"apt", "libc6", "base-files", "util-linux"} <= set(r.packages)
    assert (r.path / "usr/bin/apt").is_file()
    assert (r.path / "usr/share/doc").is_dir()
    shadow = os.lstat(r.path / "etc/shadow")
    assert shadow.st_uid == 0 and shadow.st_gid == 42  # group "shadow"
    assert os.lstat(r.path / "usr/bin/passwd").st_mode & stat.S_ISUID
    assert list((r.path / "dev").iterdir()) == []


def test_cached_second_call_is_fast(debian_tiny_rootfs: debian.DebianRootfs) -> None:
    start = time.monotonic()
    again = debian.build_rootfs(debian.TINY)
    assert again.cached and again.path == debian_tiny_rootfs.path
    assert time.monotonic() - start < 5


def test_copy_of_rootfs_compares_equal(
    tmp_path: Path, debian_tiny_rootfs: debian.DebianRootfs
) -> None:
    copy = debian.copy_tree(debian_tiny_rootfs.path, tmp_path / "copy")
    assert_trees_equal(debian_tiny_rootfs.path, copy)


def test_recipe_key_changes_with_recipe() -> None:
    assert debian.TINY.key() != debian.MINBASE.key()
    assert debian.TINY.key() == debian.DebianRecipe(**vars(debian.TINY)).key()
    other = debian.DebianRecipe(name="tiny", options=debian.TINY.options, source_date_epoch=1)
    assert other.key() != debian.TINY.key()


def _hold_lock(path: str, hold: float, started: multiprocessing.synchronize.Event) -> None:
    with debian.file_lock(Path(path)):
        started.set()
        time.sleep(hold)


def test_file_lock_excludes_other_processes(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(lock), 1.0, started))
    proc.start()
    try:
        assert started.wait(10)
        t0 = time.monotonic()
        with debian.file_lock(lock):
            waited = time.monotonic() - t0
        assert waited > 0.5
    finally:
        proc.join(10)
