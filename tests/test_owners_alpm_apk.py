"""alpm (a real pacman local db made with Debian's pacman) and apk (hand-written db)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from support.owners_fixtures import build_alpm_root, file_entry, write_apk_root

from chunkah.owners import DatabaseError, Ownership, assign_components
from chunkah.owners.apk import parse_installed
from chunkah.tree import Tree, read_dir

EPOCH = 1700000000

needs_pacman = pytest.mark.skipif(
    shutil.which("pacman") is None or shutil.which("bsdtar") is None,
    reason="needs Debian's pacman-package-manager and libarchive-tools",
)


@pytest.fixture(scope="module")
def alpm_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return read_dir(build_alpm_root(tmp_path_factory.mktemp("alpm")))


@pytest.fixture(scope="module")
def alpm(alpm_tree: Tree) -> Ownership:
    return assign_components(alpm_tree, build_epoch=EPOCH)


@needs_pacman
def test_alpm_components_by_pkgbase(alpm: Ownership, alpm_tree: Tree) -> None:
    # DBPath comes from etc/pacman.conf, not the default /var/lib/pacman.
    assert any(p.startswith(b"usr/lib/pacman-db/local/") for p in alpm_tree.paths())
    foo = alpm.get("alpm/foo")
    assert foo is not None
    assert {p.name for p in foo.packages} == {"foo-bin", "foo-data"}
    assert foo.version == "1.2-1"
    assert foo.mtime_clamp == 1699000000
    assert foo.purl == "pkg:alpm/arch/foo@1.2-1?arch=x86_64"
    assert alpm.component_of(b"usr/bin/foo").name == "alpm/foo"
    assert alpm.component_of(b"usr/share/foo/data").name == "alpm/foo"
    assert alpm.component_of(b"usr/lib/bar/bar.txt").name == "alpm/bar"
    # One data point: the build date, 11.9 days (from the start of its day)
    # before the epoch: exp(-7 / 11.93).
    assert foo.stability == pytest.approx(0.556017, abs=1e-6)
    # Each package's own database entry goes with the package.
    desc = next(p for p in alpm_tree.paths() if b"/foo-data-" in p and p.endswith(b"/desc"))
    assert alpm.component_of(desc).name == "alpm/foo"
    assert alpm.component_of(b"usr/lib/pacman-db/local/ALPM_DB_VERSION").name == (
        "chunkah/unclaimed"
    )


@needs_pacman
def test_alpm_moved_file_reclaimed_by_mtree_sha256(alpm_tree: Tree) -> None:
    tree = Tree(alpm_tree)
    e = tree.remove(b"usr/share/foo/data")
    tree.add(replace(e, path=b"usr/share/data"))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.reclaimed == {b"usr/share/data": "alpm/foo"}


@needs_pacman
def test_alpm_corrupt_desc_names_the_file(alpm_tree: Tree, tmp_path: Path) -> None:
    tree = Tree(alpm_tree)
    desc = next(p for p in tree.paths() if p.endswith(b"/desc"))
    tree.add(file_entry(tmp_path, desc, b"no section header\n"))
    with pytest.raises(DatabaseError, match=desc.decode()):
        assign_components(tree, build_epoch=EPOCH)


@pytest.fixture
def apk_tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    write_apk_root(root)
    (root / "etc/os-release").write_text("ID=alpine\nVERSION_ID=3.19.0\n")
    return read_dir(root)


def test_apk_components_by_origin(apk_tree: Tree) -> None:
    o = assign_components(apk_tree, build_epoch=EPOCH)
    bb = o.get("apk/busybox")
    assert bb is not None
    assert {p.name for p in bb.packages} == {"busybox", "busybox-binsh"}
    assert bb.purl == "pkg:apk/alpine/busybox@1.36.1-r15?arch=x86_64"
    assert bb.mtime_clamp == 1699000000
    assert o.component_of(b"bin/sh").name == "apk/busybox"
    assert o.component_of(b"etc/motd").name == "apk/busybox"
    assert o.component_of(b"usr/lib/libz.so.1.3").name == "apk/zlib"
    assert o.component_of(b"lib/apk/db/installed").name == "chunkah/unclaimed"


def test_apk_moved_file_reclaimed_by_sha1(apk_tree: Tree) -> None:
    tree = Tree(apk_tree)
    e = tree.remove(b"usr/lib/libz.so.1.3")
    tree.add(replace(e, path=b"lib/libz.so.1"))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.reclaimed == {b"lib/libz.so.1": "apk/zlib"}


def test_apk_parser_rejects_garbage() -> None:
    with pytest.raises(DatabaseError, match="lib/apk/db/installed"):
        parse_installed(b"P:x\nnot a field\n")
    with pytest.raises(DatabaseError, match="no P:"):
        parse_installed(b"V:1.0\n\n")
