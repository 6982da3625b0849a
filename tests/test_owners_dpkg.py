"""dpkg ownership on real Debian bookworm root filesystems (mmdebstrap, cached)."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import pytest
from support import debian
from support.owners_fixtures import file_entry

from chunkah.owners import DatabaseError, Ownership, assign_components
from chunkah.owners.dpkg import parse_changelog_dates
from chunkah.tree import Tree, read_dir
from chunkah.tree.model import EntryType

EPOCH = debian.SOURCE_DATE_EPOCH
# Files below usr/ that no package lists in bookworm: a symlink debian's
# base-files postinst makes, and the info index install-info regenerates.
KNOWN_UNOWNED_USR = {b"usr/local/man", b"usr/share/info/dir"}


@pytest.fixture(scope="module")
def tiny_tree(debian_tiny_rootfs: debian.DebianRootfs) -> Tree:
    return read_dir(debian_tiny_rootfs.path)


@pytest.fixture(scope="module")
def minbase_tree(debian_minbase_rootfs: debian.DebianRootfs) -> Tree:
    return read_dir(debian_minbase_rootfs.path)


@pytest.fixture(scope="module")
def tiny(tiny_tree: Tree) -> Ownership:
    return assign_components(tiny_tree, build_epoch=EPOCH)


@pytest.fixture(scope="module")
def minbase(minbase_tree: Tree) -> Ownership:
    return assign_components(minbase_tree, build_epoch=EPOCH)


def _unclaimed_usr(o: Ownership, tree: Tree) -> set[bytes]:
    return {
        p
        for p in o.paths_of("chunkah/unclaimed")
        if p.startswith(b"usr/") and tree[p].type is not EntryType.DIR
    }


@pytest.mark.parametrize("which", ["tiny", "minbase"])
def test_every_usr_file_is_claimed(which: str, request: pytest.FixtureRequest) -> None:
    o: Ownership = request.getfixturevalue(which)
    tree: Tree = request.getfixturevalue(f"{which}_tree")
    assert _unclaimed_usr(o, tree) <= KNOWN_UNOWNED_USR
    assert all(c.kind != "bigfile" for c in o.components())


@pytest.mark.parametrize("which", ["tiny", "minbase"])
def test_unclaimed_bytes_below_two_percent(which: str, request: pytest.FixtureRequest) -> None:
    o: Ownership = request.getfixturevalue(which)
    assert o.total_bytes == o.tree.total_size()
    assert o.unclaimed_bytes < 0.02 * o.total_bytes, o.summary()
    # dpkg's own status file changes with every package: it stays unclaimed.
    assert o.component_of(b"var/lib/dpkg/status").name == "chunkah/unclaimed"


def test_merged_usr_paths_are_canonicalised(minbase: Ownership, minbase_tree: Tree) -> None:
    st = minbase.stats["dpkg"]
    # bookworm lists a few hundred paths under /bin, /sbin, /lib* that live in /usr.
    assert st.canonicalised > 300, st
    assert st.absent == 0
    assert minbase_tree[b"bin"].type is EntryType.SYMLINK
    # dash.list says /bin/dash; the file is usr/bin/dash.
    assert minbase.component_of(b"usr/bin/dash").name == "dpkg/dash"
    assert minbase.component_of(b"usr/lib/x86_64-linux-gnu/libc.so.6").name == "dpkg/glibc"
    # The top-level symlinks themselves belong to no package list.
    assert b"bin" not in minbase.paths_of("dpkg/dash")


def test_listed_but_absent_paths_are_tolerated(tiny: Ownership) -> None:
    # The tiny image is built with path-exclude for man pages, locales and docs.
    st = tiny.stats["dpkg"]
    assert st.absent > 1000
    assert st.present > 900


def test_components_keyed_by_source_package(minbase: Ownership) -> None:
    glibc = minbase.get("dpkg/glibc")
    assert glibc is not None
    names = {p.name for p in glibc.packages}
    assert {"libc6", "libc-bin"} <= names
    libc6 = next(p for p in glibc.packages if p.name == "libc6")
    assert libc6.arch == "amd64"  # read from the multi-arch libc6:amd64.list
    assert glibc.purl is not None
    assert glibc.purl.startswith("pkg:deb/debian/glibc@")
    assert "arch=source" in glibc.purl and "distro=bookworm" in glibc.purl
    # A package whose name is its source package.
    assert minbase.get("dpkg/dash") is not None
    # Binary package name that differs from its source: bsdutils -> util-linux.
    assert minbase.component_of(b"usr/bin/logger").name == "dpkg/util-linux"


def test_dpkg_control_files_follow_their_package(minbase: Ownership) -> None:
    assert minbase.component_of(b"var/lib/dpkg/info/libc6:amd64.md5sums").name == "dpkg/glibc"
    assert minbase.component_of(b"var/lib/dpkg/info/dash.postinst").name == "dpkg/dash"
    assert minbase.component_of(b"var/lib/dpkg/info/format").name == "chunkah/unclaimed"


def test_alternatives_follow_the_chosen_package(minbase: Ownership) -> None:
    assert minbase.component_of(b"usr/bin/awk").name == "dpkg/mawk"
    assert minbase.component_of(b"etc/alternatives/awk").name == "dpkg/mawk"
    assert minbase.component_of(b"var/lib/dpkg/alternatives/awk").name == "dpkg/mawk"


def test_changelog_dates_give_clamp_and_stability(
    minbase: Ownership, debian_minbase_rootfs: debian.DebianRootfs
) -> None:
    bash = minbase.get("dpkg/bash")
    assert bash is not None
    raw = gzip.decompress(
        (debian_minbase_rootfs.path / "usr/share/doc/bash/changelog.Debian.gz").read_bytes()
    )
    dates = parse_changelog_dates(raw)
    assert bash.mtime_clamp == max(dates)
    assert 0.0 <= bash.stability <= 1.0
    # Native packages only have changelog.gz.
    dpkg = minbase.get("dpkg/dpkg")
    assert dpkg is not None and dpkg.mtime_clamp is not None


def test_tiny_has_no_changelogs_so_defaults(tiny: Ownership) -> None:
    bash = tiny.get("dpkg/bash")
    assert bash is not None
    assert bash.mtime_clamp is None
    assert bash.stability == 0.9


def test_result_is_reproducible(minbase_tree: Tree, minbase: Ownership) -> None:
    again = assign_components(minbase_tree, build_epoch=EPOCH)
    assert again.components() == minbase.components()
    for c in minbase.components():
        assert list(again.paths_of(c.name)) == list(minbase.paths_of(c.name))


def test_moved_file_reclaimed_by_md5(tiny_tree: Tree) -> None:
    tree = Tree(tiny_tree)
    old = tree.remove(b"usr/bin/sed")
    tree.add(replace(old, path=b"opt/tools/sed"))
    tree.add(replace(tree[b"usr/bin"], path=b"opt"))
    tree.add(replace(tree[b"usr/bin"], path=b"opt/tools"))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"opt/tools/sed").name == "dpkg/sed"
    assert o.reclaimed == {b"opt/tools/sed": "dpkg/sed"}
    # Hashing was bounded to the unclaimed files, not the image.
    assert o.reclaim_hashed_bytes < 2 * 1024 * 1024


def test_local_diversion_moves_the_claim(tiny_tree: Tree, tmp_path: Path) -> None:
    tree = Tree(tiny_tree)
    sed = tree.remove(b"usr/bin/sed")
    tree.add(replace(sed, path=b"usr/bin/sed.distrib"))
    tree.add(
        replace(
            file_entry(
                tmp_path,
                b"var/lib/dpkg/diversions",
                tiny_tree[b"var/lib/dpkg/diversions"].content.open().read()  # type: ignore[union-attr]
                + b"/bin/sed\n/bin/sed.distrib\n:\n",
            ),
            mode=0o644,
        )
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"usr/bin/sed.distrib").name == "dpkg/sed"
    assert b"usr/bin/sed.distrib" not in o.reclaimed


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("status", b"Package: x\nthis line has no colon\n", "var/lib/dpkg/status"),
        ("status", b"Status: install ok installed\n", "no Package field"),
        ("info/dash.md5sums", b"nothex  usr/bin/dash\n", "var/lib/dpkg/info/dash.md5sums"),
        ("diversions", b"/a\n/b\n", "diversions"),
    ],
)
def test_corrupt_database_names_the_file(
    tiny_tree: Tree, tmp_path: Path, name: str, content: bytes, needle: str
) -> None:
    tree = Tree(tiny_tree)
    tree.add(file_entry(tmp_path, b"var/lib/dpkg/" + name.encode(), content))
    with pytest.raises(DatabaseError) as info:
        assign_components(tree, build_epoch=EPOCH)
    assert needle in str(info.value)
    assert info.value.exit_code == 2  # an InputError


def test_database_read_from_the_tree_not_the_host(tmp_path: Path) -> None:
    # A tree whose status file is a symlink to an absolute path: resolved in the
    # tree (where it does not exist), never on the host's /var/lib/dpkg.
    tree = Tree()
    for d in (b"var", b"var/lib", b"var/lib/dpkg"):
        tree.add(replace(file_entry(tmp_path, d, b""), type=EntryType.DIR, size=0, content=None))
    tree.add(
        replace(
            file_entry(tmp_path, b"var/lib/dpkg/status", b""),
            type=EntryType.SYMLINK,
            size=0,
            content=None,
            link_target=os.fsencode("/var/lib/dpkg/status-host"),
        )
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert [c.name for c in o.components()] == ["chunkah/unclaimed"]
