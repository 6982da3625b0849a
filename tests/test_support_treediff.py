"""The tree diff is a judge: prove it sees every kind of difference."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.handmade import CLAMP, NEW_MTIME, OLD_MTIME, HandmadeTree, make_handmade_tree
from support.treediff import assert_trees_equal, diff_trees, dropped_xattrs, show

IS_ROOT = os.geteuid() == 0


def cp_a(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True, timeout=120)
    return dst


@pytest.fixture
def pair(tmp_path: Path) -> tuple[HandmadeTree, Path]:
    """The hand-made tree and an identical ``cp -a`` copy of it."""
    tree = make_handmade_tree(tmp_path / "a")
    return tree, cp_a(tree.root, tmp_path / "b")


def keep_mtime(path: bytes, fn: Callable[[], None]) -> None:
    """Run *fn* (which changes *path*) and restore path's and its parent's mtimes."""
    parent = os.path.dirname(path)
    saved = [(p, os.lstat(p).st_mtime_ns) for p in (path, parent) if os.path.lexists(p)]
    fn()
    for p, ns in saved:
        if os.path.lexists(p):
            os.utime(p, ns=(ns, ns), follow_symlinks=False)


def test_copy_is_equal(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    assert diff_trees(tree.root, b) == []
    assert_trees_equal(tree.root, b)


def test_handmade_tree_has_everything(handmade_tree: HandmadeTree) -> None:
    t = handmade_tree
    assert len(t.hardlink_groups[0]) == 3
    assert len({p.split(b"/")[0] for p in t.hardlink_groups[0]}) == 2  # across directories
    assert any(len(os.path.basename(p)) > 100 for p in t.long_names)
    assert all(len(p) > 255 for p in t.long_paths)
    assert t.non_utf8 and t.odd_names and t.fifos
    assert os.path.getsize(t.abspath(b"files/large.bin")) > 1024 * 1024
    st = os.lstat(t.abspath(b"sticky"))
    assert stat.S_IMODE(st.st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(t.abspath(b"bin/suid")).st_mode) == 0o4755
    assert {OLD_MTIME < CLAMP, NEW_MTIME > CLAMP} == {True}
    assert any(m > CLAMP for m in t.mtimes.values()) and any(m < CLAMP for m in t.mtimes.values())
    for rel, mt in t.mtimes.items():
        assert os.lstat(t.abspath(rel)).st_mtime == mt, show(rel)
    if IS_ROOT:
        assert t.skipped == []
        assert t.char_devices and t.block_devices
        assert os.lstat(t.abspath(b"owned/suid")).st_mode & stat.S_ISUID
        assert os.lstat(t.abspath(b"owned/link")).st_uid == 1234
        assert "security.capability" in t.kept_xattrs[b"xattrs/cap"]
        assert set(t.dropped_xattrs[b"xattrs/dropped"]) == {
            "trusted.overlay.opaque",
            "security.selinux",
        }


def test_handmade_tree_is_deterministic(tmp_path: Path) -> None:
    a = make_handmade_tree(tmp_path / "a")
    b = make_handmade_tree(tmp_path / "b")
    assert a.all_paths() == b.all_paths()
    assert diff_trees(a.root, b.root) == []


def one(diffs: list[str], needle: str) -> str:
    """Exactly one difference, containing *needle*."""
    assert len(diffs) == 1, diffs
    assert needle in diffs[0], diffs
    return diffs[0]


def test_missing_and_extra_paths(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    keep_mtime(bytes(b / "files/small.txt"), lambda: os.unlink(b / "files/small.txt"))
    keep_mtime(bytes(b / "files/new"), lambda: (b / "files/new").write_bytes(b""))
    assert diff_trees(tree.root, b) == [
        "only in b: files/new (file)",
        "only in a: files/small.txt (file)",
    ]


def test_non_utf8_and_newline_names_are_readable(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    bb = os.fsencode(b)
    for rel in (b"names/caf\xe9", b"names/with\nnewline"):
        keep_mtime(os.path.join(bb, rel), lambda r=rel: os.unlink(os.path.join(bb, r)))
    diffs = diff_trees(tree.root, b)
    assert "only in a: names/caf\\xe9 (file)" in diffs
    assert "only in a: names/with\\nnewline (file)" in diffs
    assert all("\n" not in d for d in diffs)


def test_type_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "links/relative"

    def swap() -> None:
        p.unlink()
        p.write_bytes(b"../files/small.txt")

    keep_mtime(bytes(p), swap)
    one(diff_trees(tree.root, b), "type differs for links/relative: symlink != file")


def test_content_differs_same_size(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "files/large.bin"

    def flip_last_byte() -> None:
        with open(p, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))

    keep_mtime(bytes(p), flip_last_byte)
    one(diff_trees(tree.root, b), "content differs for files/large.bin: sha256")


def test_size_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "files/empty"
    keep_mtime(bytes(p), lambda: p.write_bytes(b"x"))
    one(diff_trees(tree.root, b), "size differs for files/empty: 0 != 1")


@pytest.mark.parametrize(
    ("rel", "new_mode", "expected"),
    [
        ("bin/suid", 0o755, "mode differs for bin/suid: 0o4755 != 0o755"),
        ("bin/sgid", 0o755, "mode differs for bin/sgid: 0o2755 != 0o755"),
        ("sticky", 0o777, "mode differs for sticky: 0o1777 != 0o777"),
        ("private", 0o755, "mode differs for private: 0o700 != 0o755"),
        ("files/small.txt", 0o664, "mode differs for files/small.txt: 0o644 != 0o664"),
    ],
)
def test_mode_differs(
    pair: tuple[HandmadeTree, Path], rel: str, new_mode: int, expected: str
) -> None:
    tree, b = pair
    os.chmod(b / rel, new_mode)
    assert diff_trees(tree.root, b) == [expected]


@pytest.mark.needs_root
def test_owner_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.chown(b / "owned/link", 0, 0, follow_symlinks=False)
    assert diff_trees(tree.root, b) == ["owner differs for owned/link: 1234:5678 != 0:0"]
    assert diff_trees(tree.root, b, check_owner=False) == []


def test_user_xattr_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.setxattr(b / "xattrs/user", "user.component", b"other")
    one(diff_trees(tree.root, b), "xattrs differ for xattrs/user")
    os.removexattr(b / "xattrs/user", "user.component")
    one(diff_trees(tree.root, b), "xattrs differ for xattrs/user")
    assert diff_trees(tree.root, b, check_xattrs=False) == []


def test_acl_xattr_is_kept(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f").write_bytes(b"acl\n")
    b = cp_a(a, tmp_path / "b")
    subprocess.run(["setfacl", "-m", "u:1234:r", str(a / "f")], check=True, timeout=30)
    os.chmod(b / "f", os.lstat(a / "f").st_mode)  # setfacl changes the group bits too
    one(diff_trees(a, b), "xattrs differ for f: {system.posix_acl_access=")


@pytest.mark.needs_root
def test_capability_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.removexattr(b / "xattrs/cap", "security.capability")
    one(diff_trees(tree.root, b), "xattrs differ for xattrs/cap: {security.capability=")


@pytest.mark.needs_root
def test_dropped_xattrs_are_not_compared(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    assert dropped_xattrs(b) == {b"xattrs/dropped": ["security.selinux", "trusted.overlay.opaque"]}
    os.removexattr(b / "xattrs/dropped", "trusted.overlay.opaque")
    os.removexattr(b / "xattrs/dropped", "security.selinux")
    assert diff_trees(tree.root, b) == []
    assert dropped_xattrs(b) == {}


def test_symlink_target_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "links/dangling"

    def retarget() -> None:
        p.unlink()
        os.symlink("../does/not/exist2", p)

    keep_mtime(bytes(p), retarget)
    assert diff_trees(tree.root, b) == [
        "symlink target differs for links/dangling: ../does/not/exist != ../does/not/exist2"
    ]


@pytest.mark.needs_root
def test_device_number_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "special/null"

    def renode() -> None:
        p.unlink()
        os.mknod(p, stat.S_IFCHR | 0o660, os.makedev(1, 5))
        os.chmod(p, 0o660)

    keep_mtime(bytes(p), renode)
    assert diff_trees(tree.root, b) == ["device differs for special/null: 1,3 != 1,5"]


def test_broken_hardlink_is_seen(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    p = b / "hl-b/sub/three"

    def unshare() -> None:
        data = p.read_bytes()
        st = os.lstat(p)
        p.unlink()
        p.write_bytes(data)
        os.chmod(p, stat.S_IMODE(st.st_mode))
        os.chown(p, st.st_uid, st.st_gid)
        os.utime(p, ns=(st.st_mtime_ns, st.st_mtime_ns))

    keep_mtime(bytes(p), unshare)
    diffs = diff_trees(tree.root, b)
    assert diffs, "a hardlink turned into a copy must be a difference"
    assert all(d.startswith("hardlink set differs for hl-") for d in diffs), diffs
    assert "{hl-a/one, hl-b/sub/three, hl-b/two} != {hl-a/one, hl-b/two}" in "\n".join(diffs)


def test_new_hardlink_is_seen(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    # Two files with equal content and metadata: linking them changes only the partition.
    p, q = b / "hl-a/empty-1", b / "files/empty"
    os.chmod(q, os.lstat(p).st_mode)
    os.chmod(tree.root / "files/empty", os.lstat(p).st_mode)
    mt = os.lstat(p).st_mtime_ns
    os.utime(tree.root / "files/empty", ns=(mt, mt))
    os.utime(q, ns=(mt, mt))
    assert diff_trees(tree.root, b) == []

    def link() -> None:
        q.unlink()
        os.link(p, q)

    keep_mtime(bytes(q), link)
    diffs = diff_trees(tree.root, b)
    assert diffs and all("hardlink set differs" in d for d in diffs), diffs


def test_mtime_differs(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.utime(b / "files/small.txt", (1, 12345))
    mt = tree.mtimes[b"files/small.txt"]
    assert diff_trees(tree.root, b) == [f"mtime differs for files/small.txt: {mt} != 12345"]
    assert diff_trees(tree.root, b, check_mtime=False) == []


def test_symlink_mtime_is_compared(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.utime(b / "links/to-dir", ns=(0, 0), follow_symlinks=False)
    one(diff_trees(tree.root, b), "mtime differs for links/to-dir")


def test_dir_mtime_flag(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.utime(b / "hl-b", (1, 1))
    one(diff_trees(tree.root, b), "mtime differs for hl-b")
    assert diff_trees(tree.root, b, check_dir_mtime=False) == []
    os.utime(b / "hl-b/sub/three", (1, 1))  # a hardlink group shares one mtime
    diffs = diff_trees(tree.root, b, check_dir_mtime=False)
    assert [d.split(":")[0] for d in diffs] == [
        "mtime differs for hl-a/one",
        "mtime differs for hl-b/sub/three",
        "mtime differs for hl-b/two",
    ]


def test_mtime_clamp_rule(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    for name, mt in (("old", OLD_MTIME), ("new", NEW_MTIME)):
        (a / name).write_bytes(b"")
        os.utime(a / name, (mt, mt))
    b = cp_a(a, tmp_path / "b")
    os.utime(b, (CLAMP, CLAMP))
    os.utime(a, (CLAMP, CLAMP))
    # An unclamped copy is wrong under the clamp rule (b must have min(a, clamp)).
    one(diff_trees(a, b, mtime_clamp=CLAMP), f"mtime differs for new: b has {NEW_MTIME}")
    os.utime(b / "new", (CLAMP, CLAMP))
    assert diff_trees(a, b, mtime_clamp=CLAMP) == []
    # Clamping what was below the clamp is wrong too.
    os.utime(b / "old", (CLAMP, CLAMP))
    one(diff_trees(a, b, mtime_clamp=CLAMP), "mtime differs for old")


def test_ignore(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    shutil.rmtree(b / "names")
    os.chmod(b / "files/exec.sh", 0o644)
    os.chmod(b, 0o700)
    assert len(diff_trees(tree.root, b)) > 3
    assert diff_trees(tree.root, b, ignore=("names", "files/*.sh", ".")) == []
    # Ignoring a path ignores it on both sides, not just one.
    assert diff_trees(tree.root, b, ignore=("names/", "files/exec.sh", ".")) == []


def test_root_metadata_is_compared(pair: tuple[HandmadeTree, Path]) -> None:
    tree, b = pair
    os.chmod(b, 0o700)
    assert diff_trees(tree.root, b) == ["mode differs for .: 0o755 != 0o700"]


def test_assert_trees_equal_shows_first_50(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(60):
        (a / f"f{i:02d}").write_bytes(b"")
    os.utime(b, ns=(os.lstat(a).st_mtime_ns,) * 2)
    with pytest.raises(AssertionError) as exc:
        assert_trees_equal(a, b)
    text = str(exc.value)
    assert text.startswith("60 difference(s) between")
    assert "only in a: f49 (file)" in text and "only in a: f50 (file)" not in text
    assert text.endswith("... and 10 more")


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"1")
    a = tmp_path / "a"
    a.mkdir()
    os.symlink(outside, a / "link")
    b = cp_a(a, tmp_path / "b")
    (outside / "f").write_bytes(b"2")  # behind the symlink: not part of either tree
    assert diff_trees(a, b) == []
