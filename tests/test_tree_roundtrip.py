"""Round trips: directory -> canonical tar -> Tree -> extracted directory, judged by GNU tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from support.handmade import CLAMP, HandmadeTree
from support.treediff import assert_trees_equal

from chunkah.tree import (
    EntryType,
    SpecialFileError,
    Tree,
    extract_tar,
    read_dir,
    read_tar,
    write_tar,
)


def _tar_bytes(tree: Tree, **kw: int | None) -> bytes:
    buf = io.BytesIO()
    result = write_tar(tree, buf, **kw)  # type: ignore[arg-type]
    data = buf.getvalue()
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    return data


def _content(tree: Tree, path: bytes) -> bytes:
    entry = tree[path]
    assert entry.content is not None
    with entry.content.open() as f:
        return f.read()


def _assert_same_contents(a: Tree, b: Tree) -> None:
    for entry in a:
        if entry.type is EntryType.FILE:
            assert _content(a, entry.path) == _content(b, entry.path), entry.path


def test_special_files_refused_by_default(handmade_tree: HandmadeTree) -> None:
    with pytest.raises(SpecialFileError, match="special/fifo"):
        read_dir(handmade_tree.root)
    tree = read_dir(handmade_tree.root, skip_special_files=True)
    assert b"special/fifo" not in tree
    assert b"special" in tree


def test_read_dir_sees_every_kind(handmade_tree: HandmadeTree) -> None:
    t = handmade_tree
    tree = read_dir(t.root, include_special_files=True)
    assert tree[b""].type is EntryType.DIR
    assert set(tree.paths()) == {b"", *t.all_paths()}
    for rel, target in t.symlinks.items():
        assert tree[rel].type is EntryType.SYMLINK and tree[rel].link_target == target
    for rel, mode in t.modes.items():
        assert tree[rel].mode == mode, rel
    for rel, mtime in t.mtimes.items():
        assert tree[rel].mtime == mtime, rel
    for rel, kept in t.kept_xattrs.items():
        assert dict(tree[rel].xattrs) == kept, rel
    for rel in t.dropped_xattrs:
        assert not set(dict(tree[rel].xattrs)) & set(t.dropped_xattrs[rel]), rel
    groups = sorted(sorted(g) for g in tree.hardlink_groups().values())
    assert groups == sorted(sorted(g) for g in t.hardlink_groups)
    for key, members in tree.hardlink_groups().items():
        assert key == members[0]  # canonical key: first member in canonical order
    assert tree[b"special/fifo"].type is EntryType.FIFO
    for rel, dev in t.char_devices.items():
        assert tree[rel].type is EntryType.CHAR and tree[rel].rdev == dev


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd", "pipe"])
def test_dir_tar_tree_round_trip(
    handmade_tree: HandmadeTree, tmp_path: Path, compress: str
) -> None:
    tree = read_dir(handmade_tree.root, include_special_files=True)
    data = _tar_bytes(tree)
    spool = tmp_path / "spool"
    spool.mkdir()
    if compress == "none":
        (tmp_path / "l.tar").write_bytes(data)
        back = read_tar(tmp_path / "l.tar", spool_dir=spool)
        assert not any(spool.iterdir())  # byte ranges of the tar file, nothing spooled
    elif compress == "gzip":
        back = read_tar(io.BytesIO(gzip.compress(data)), spool_dir=spool)
    elif compress == "zstd":
        back = read_tar(io.BytesIO(zstandard.ZstdCompressor().compress(data)), spool_dir=spool)
    else:
        # A real pipe: not seekable, short reads.
        (tmp_path / "l.tar").write_bytes(data)
        proc = subprocess.Popen(["cat", tmp_path / "l.tar"], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        back = read_tar(proc.stdout, spool_dir=spool)
        assert proc.wait() == 0
    assert back == tree
    _assert_same_contents(tree, back)
    # And the re-read tree writes the very same bytes.
    assert _tar_bytes(back) == data


def test_write_is_deterministic(handmade_tree: HandmadeTree) -> None:
    one = _tar_bytes(read_dir(handmade_tree.root, include_special_files=True))
    two = _tar_bytes(read_dir(handmade_tree.root, include_special_files=True))
    assert one == two


def test_canonical_order_and_format(handmade_tree: HandmadeTree) -> None:
    data = _tar_bytes(read_dir(handmade_tree.root, include_special_files=True))
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
    names = [os.fsencode(m.name) for m in members]
    assert names[0] == b"."
    keys = [tuple(n.split(b"/")) for n in names[1:]]
    assert keys == sorted(keys)
    seen: set[bytes] = set()
    for m, n in zip(members[1:], names[1:], strict=True):
        assert m.uname == "" and m.gname == ""
        parent = n.rsplit(b"/", 1)[0] if b"/" in n else None
        assert parent is None or parent in seen, n  # parents first
        seen.add(n)
    # Hardlinks: the first of a group in canonical order is the file, the others link to it.
    links = {os.fsencode(m.name): os.fsencode(m.linkname) for m in members if m.islnk()}
    assert links[b"hl-b/sub/three"] == b"hl-a/one"
    assert links[b"hl-b/two"] == b"hl-a/one"
    assert links[b"names/" + b"h" * 120].startswith(b"names/0000")


def test_mtime_clamp(handmade_tree: HandmadeTree, tmp_path: Path) -> None:
    tree = read_dir(handmade_tree.root, skip_special_files=True)
    data = _tar_bytes(tree, mtime_clamp=CLAMP)
    back = read_tar(io.BytesIO(data), spool_dir=tmp_path)
    for entry in tree:
        assert back[entry.path].mtime == min(entry.mtime, CLAMP)
    assert any(e.mtime > CLAMP for e in tree)
    assert _tar_bytes(tree, mtime_clamp=None) != data


def test_gnu_tar_lists_and_extracts_identically(
    handmade_tree: HandmadeTree, tmp_path: Path
) -> None:
    tree = read_dir(handmade_tree.root, include_special_files=True)
    archive = tmp_path / "out.tar"
    with open(archive, "wb") as f:
        write_tar(tree, f)
    listing = subprocess.run(
        ["tar", "-tvf", archive], check=True, capture_output=True
    ).stdout.splitlines()
    assert len(listing) == len(tree)
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--same-owner", "-xpf", archive, "-C", dest],
        check=True,
    )
    assert_trees_equal(handmade_tree.root, dest)
    # GNU tar's own view agrees with the directory: nothing differs.
    subprocess.run(["tar", "--xattrs", "-df", archive, "-C", handmade_tree.root], check=True)


def test_extract_round_trip(handmade_tree: HandmadeTree, tmp_path: Path) -> None:
    tree = read_dir(handmade_tree.root, include_special_files=True)
    data = _tar_bytes(tree)
    dest = tmp_path / "ours"
    dest.mkdir()
    result = extract_tar(io.BytesIO(zstandard.ZstdCompressor().compress(data)), dest)
    assert result.entries == len(tree)
    assert result.skipped == ()
    assert_trees_equal(handmade_tree.root, dest)
    # And reading the extracted copy gives the same tree back.
    again = read_dir(dest, include_special_files=True)
    assert again == tree
    assert _tar_bytes(again) == data


def test_extract_as_gnu_tar_archive(handmade_tree: HandmadeTree, tmp_path: Path) -> None:
    """Our extractor reads what GNU tar writes (GNU long names, PAX xattrs)."""
    archive = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--format=gnu", "--sort=name", "-cf", archive, "-C", handmade_tree.root, "."],
        check=True,
    )
    dest = tmp_path / "x"
    dest.mkdir()
    extract_tar(archive, dest)
    # --format=gnu cannot hold xattrs; the rest must match.
    assert_trees_equal(handmade_tree.root, dest, check_xattrs=False)
    archive = tmp_path / "pax.tar"
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--format=posix",
            "--sort=name",
            "-cf",
            archive,
            "-C",
            handmade_tree.root,
            ".",
        ],
        check=True,
    )
    tree = read_tar(archive, spool_dir=tmp_path)
    assert tree == read_dir(handmade_tree.root, include_special_files=True)


def test_unchanged_file_size_is_checked(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"12345")
    tree = read_dir(root)
    (root / "f").write_bytes(b"123")
    with pytest.raises(Exception, match="shrank"):
        write_tar(tree, io.BytesIO())


def test_symlink_swapped_for_file_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"12345")
    (tmp_path / "secret").write_bytes(b"abcde")
    tree = read_dir(root)
    (root / "f").unlink()
    (root / "f").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):  # O_NOFOLLOW: ELOOP
        write_tar(tree, io.BytesIO())
