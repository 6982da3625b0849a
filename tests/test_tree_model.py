"""The tree model, xattr policy, prune rules, layer flattening, and a hypothesis round trip."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkah.tree import (
    Entry,
    EntryType,
    TarFormatError,
    Tree,
    TreeError,
    extract_tar,
    flatten_layers,
    keep_xattr,
    normalize_path,
    parse_prune,
    read_dir,
    read_tar,
    write_tar,
)

# --- model ------------------------------------------------------------------------


def test_canonical_order_parents_first() -> None:
    paths = [b"a.b", b"a/b", b"a", b"", b"a-b/c", b"a/b/c", b"b", b"a/a"]
    tree = Tree(Entry(p, EntryType.DIR, mode=0o755) for p in paths)
    # '/' (0x2f) sorts after '-' and '.', but a's children still follow a directly.
    assert tree.paths() == [b"", b"a", b"a/a", b"a/b", b"a/b/c", b"a-b/c", b"a.b", b"b"]


def test_canonical_order_matches_gnu_tar(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for rel in ["a/b", "a-b", "a.b/c", "a b", "A", "\xe9", "a/b/c"]:
        (root / rel).mkdir(parents=True)
    out = tmp_path / "gnu.tar"
    import subprocess

    subprocess.run(["tar", "--sort=name", "-cf", out, "-C", root, "."], check=True)
    with tarfile.open(out, encoding="utf-8", errors="surrogateescape") as tf:
        gnu = [normalize_path(os.fsencode(m.name)) for m in tf.getmembers()]
    assert gnu == read_dir(root).paths()


def test_normalize_path() -> None:
    assert normalize_path(b"./usr//bin/") == b"usr/bin"
    assert normalize_path("/etc/./x") == b"etc/x"
    assert normalize_path(b"./") == b""


def test_entry_validation() -> None:
    with pytest.raises(ValueError):
        Entry(b"d", EntryType.DIR, size=3)
    with pytest.raises(ValueError):
        Entry(b"f", EntryType.FILE, mode=0o100644)
    with pytest.raises(ValueError):
        Entry(b"l", EntryType.SYMLINK, hardlink_group=b"x")
    with pytest.raises(TreeError):
        Tree([Entry(b"/abs", EntryType.DIR)])


def test_hardlink_groups_canonicalized() -> None:
    tree = Tree(
        [
            Entry(b"z", EntryType.FILE, hardlink_group=b"k"),
            Entry(b"a/y", EntryType.FILE, hardlink_group=b"k"),
            Entry(b"lonely", EntryType.FILE, hardlink_group=b"j"),
        ]
    )
    tree.canonicalize_hardlinks()
    assert tree.hardlink_groups() == {b"a/y": [b"a/y", b"z"]}
    assert tree[b"lonely"].hardlink_group is None


def test_total_size_counts_hardlinks_once() -> None:
    tree = Tree(
        [
            Entry(b"a", EntryType.FILE, size=10, hardlink_group=b"a"),
            Entry(b"b", EntryType.FILE, size=10, hardlink_group=b"a"),
            Entry(b"c", EntryType.FILE, size=5),
        ]
    )
    assert tree.total_size() == 15


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("security.capability", True),
        ("system.posix_acl_access", True),
        ("system.posix_acl_default", True),
        ("user.component", True),
        ("security.selinux", False),
        ("security.ima", False),
        ("trusted.overlay.opaque", False),
        ("system.nfs4_acl", False),
    ],
)
def test_xattr_policy(name: str, kept: bool) -> None:
    assert keep_xattr(name) is kept


# --- prune -----------------------------------------------------------------------


def test_prune_rules(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for rel in ["var/cache/apt/x", "var/log/y", "tmp/z", "home/u"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"1")
    tree = read_dir(root, prune=["/var/cache", "/tmp/", "home"])
    paths = set(tree.paths())
    assert b"var/cache" not in paths and b"var/cache/apt/x" not in paths
    assert b"tmp" in paths and b"tmp/z" not in paths
    assert b"home" not in paths
    assert b"var/log/y" in paths
    assert parse_prune(["/a", "/b/", "c/d/"]) == (frozenset({b"a"}), frozenset({b"b", b"c/d"}))
    with pytest.raises(TreeError):
        parse_prune(["/a/../b"])


def test_prune_drops_a_hardlink_partner(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "keep").mkdir(parents=True)
    (root / "drop").mkdir()
    (root / "keep/a").write_bytes(b"x")
    os.link(root / "keep/a", root / "drop/b")
    tree = read_dir(root, prune=["/drop"])
    assert tree[b"keep/a"].hardlink_group is None


# --- layers ----------------------------------------------------------------------


def _layer(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """members: (name, kind, data-or-linkname); kind in file/dir/symlink/hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[kind]
            ti.linkname = payload if isinstance(payload, str) else ""
            tf.addfile(ti)
    buf.seek(0)
    return buf


def _data(tree: Tree, path: bytes) -> bytes:
    c = tree[path].content
    assert c is not None
    with c.open() as f:
        return f.read()


def test_whiteouts_and_opaque(tmp_path: Path) -> None:
    lower = _layer(
        ("etc", "dir", b""),
        ("etc/a", "file", b"a"),
        ("etc/b", "file", b"b"),
        ("opt", "dir", b""),
        ("opt/old", "file", b"o"),
        ("opt/sub", "dir", b""),
        ("opt/sub/deep", "file", b"d"),
        ("gone", "dir", b""),
        ("gone/x", "file", b"x"),
    )
    upper = _layer(
        ("etc/.wh.a", "file", b""),
        ("opt/new", "file", b"n"),  # before the opaque marker, same layer: survives
        ("opt/.wh..wh..opq", "file", b""),
        (".wh.gone", "file", b""),
        ("etc/.wh.never-existed", "file", b""),
        ("etc/.wh..wh.plnk", "file", b""),  # AUFS metadata: ignored
    )
    tree = flatten_layers([lower, upper], spool_dir=tmp_path)
    assert tree.paths() == [b"etc", b"etc/b", b"opt", b"opt/new"]


def test_later_layer_replaces_and_dir_replaced_by_file(tmp_path: Path) -> None:
    lower = _layer(("x", "dir", b""), ("x/y", "file", b"y"), ("f", "file", b"old"))
    upper = _layer(("x", "file", b"now a file"), ("f", "file", b"new"))
    tree = flatten_layers([lower, upper], spool_dir=tmp_path)
    assert tree.paths() == [b"f", b"x"]
    assert _data(tree, b"f") == b"new"
    assert _data(tree, b"x") == b"now a file"


def test_hardlink_target_replaced_in_upper_layer(tmp_path: Path) -> None:
    lower = _layer(("a", "file", b"old"), ("b", "hardlink", "a"), ("c", "hardlink", "a"))
    upper = _layer(("a", "file", b"new"), ("d", "hardlink", "b"))
    tree = flatten_layers([lower, upper], spool_dir=tmp_path)
    assert _data(tree, b"a") == b"new"
    assert tree[b"a"].hardlink_group is None
    assert _data(tree, b"b") == _data(tree, b"d") == b"old"
    assert tree.hardlink_groups() == {b"b": [b"b", b"c", b"d"]}


def test_hardlink_in_same_tar_then_target_replaced(tmp_path: Path) -> None:
    layer = _layer(("a", "file", b"one"), ("b", "hardlink", "a"), ("a", "file", b"two"))
    tree = read_tar(layer, spool_dir=tmp_path)
    assert _data(tree, b"a") == b"two" and _data(tree, b"b") == b"one"
    assert tree.hardlink_groups() == {}


def test_hardlink_to_missing_target(tmp_path: Path) -> None:
    with pytest.raises(TarFormatError, match="not earlier in the archive"):
        read_tar(_layer(("b", "hardlink", "nowhere")), spool_dir=tmp_path)


def test_entry_below_a_lower_symlink_is_an_error(tmp_path: Path) -> None:
    lower = _layer(("lib", "symlink", "usr/lib"))
    upper = _layer(("lib/x", "file", b"x"))
    with pytest.raises(TreeError, match="lib/x"):
        flatten_layers([lower, upper], spool_dir=tmp_path)


def test_unsupported_compression(tmp_path: Path) -> None:
    import bz2

    with pytest.raises(TreeError):
        read_tar(io.BytesIO(bz2.compress(b"x" * 1000)), spool_dir=tmp_path)


# --- hypothesis: random trees survive dir -> tar -> tree -> dir --------------------

_names = st.binary(min_size=1, max_size=130).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
_node = st.recursive(
    st.one_of(
        st.tuples(
            st.just("file"), st.binary(max_size=3000), st.sampled_from([0o644, 0o4755, 0o600])
        ),
        st.tuples(
            st.just("symlink"), st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b)
        ),
    ),
    lambda children: st.tuples(
        st.just("dir"),
        st.dictionaries(_names, children, max_size=4),
        st.sampled_from([0o755, 0o700, 0o1777]),
    ),
    max_leaves=12,
)


def _make(path: bytes, node: tuple, made: list[bytes]) -> None:
    kind = node[0]
    if kind == "file":
        with open(path, "wb") as f:
            f.write(node[1])
        os.chmod(path, node[2])
        made.append(path)
    elif kind == "symlink":
        os.symlink(node[1], path)
    else:
        os.mkdir(path)
        for name, child in node[1].items():
            _make(path + b"/" + name, child, made)
        os.chmod(path, node[2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    root=st.tuples(
        st.just("dir"), st.dictionaries(_names, _node, min_size=1, max_size=5), st.just(0o755)
    ),
    xattr=st.binary(max_size=64),
    clamp=st.one_of(st.none(), st.integers(0, 2**33)),
)
def test_random_tree_round_trip(root: tuple, xattr: bytes, clamp: int | None) -> None:
    from support.treediff import assert_trees_equal

    base = tempfile.mkdtemp(prefix="chunkah-hyp-")
    try:
        src = os.fsencode(base) + b"/src"
        made: list[bytes] = []
        _make(src, root, made)
        if made:
            os.setxattr(made[0], "user.h", xattr)
            os.link(made[0], src + b"/hl-" + b"x" * 100)
        tree = read_dir(src)
        buf = io.BytesIO()
        write_tar(tree, buf, mtime_clamp=clamp)
        data = buf.getvalue()
        back = read_tar(io.BytesIO(data), spool_dir=base)
        expected = tree
        if clamp is not None:
            from dataclasses import replace

            expected = Tree(replace(e, mtime=min(e.mtime, clamp)) for e in tree)
        assert back == expected
        buf2 = io.BytesIO()
        write_tar(back, buf2)
        assert buf2.getvalue() == data  # the canonical form is a fixed point
        dest = os.fsencode(base) + b"/dest"
        os.mkdir(dest)
        extract_tar(io.BytesIO(data), dest)
        assert_trees_equal(src, dest, mtime_clamp=clamp)
    finally:
        shutil.rmtree(base)
