"""rpm ownership against a real sqlite rpmdb built here with rpmbuild and rpm --root."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from support.owners_fixtures import build_rpm_root, file_entry, rpm_query

from chunkah.owners import DatabaseError, Ownership, assign_components
from chunkah.owners.rpm import parse_srpm_name, read_rpmdb
from chunkah.tree import Tree, read_dir

EPOCH = 1700000000
DB = "usr/lib/sysimage/rpm/rpmdb.sqlite"

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("rpm") is None,
    reason="needs Debian's rpm package (apt-get install rpm)",
)


@pytest.fixture(scope="module")
def rpm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rpm_root(tmp_path_factory.mktemp("rpm"))


@pytest.fixture(scope="module")
def rpm_tree(rpm_root: Path) -> Tree:
    return read_dir(rpm_root)


@pytest.fixture(scope="module")
def owned(rpm_tree: Tree) -> Ownership:
    return assign_components(rpm_tree, build_epoch=EPOCH)


def test_backend_is_sqlite(rpm_root: Path) -> None:
    assert (rpm_root / DB).is_file()
    con = sqlite3.connect(f"file:{rpm_root / DB}?mode=ro&immutable=1", uri=True)
    assert con.execute("SELECT count(*) FROM Packages").fetchone()[0] == 3


def test_headers_match_rpm_cli(rpm_root: Path) -> None:
    ours = read_rpmdb(rpm_root / DB, shown_as=DB)
    got = sorted(
        f"{p.name} {p.epoch if p.epoch is not None else '(none)'} {p.version}-{p.release} "
        f"{p.arch} {p.sourcerpm} {p.buildtime}"
        for p in ours
    )
    want = sorted(
        rpm_query(
            rpm_root,
            "-qa",
            "--qf",
            "%{NAME} %{EPOCH} %{VERSION}-%{RELEASE} %{ARCH} %{SOURCERPM} %{BUILDTIME}\\n",
        ).splitlines()
    )
    assert got == want
    for p in ours:
        files = rpm_query(rpm_root, "-ql", p.name).split()
        assert sorted(f.path.decode() for f in p.files) == sorted(files)
        times = rpm_query(rpm_root, "-q", "--qf", "[%{CHANGELOGTIME}\\n]", p.name).split()
        assert list(p.changelog_times) == [int(t) for t in times]
        digests = rpm_query(rpm_root, "-q", "--qf", "[%{FILEDIGESTS}\\n]", p.name).split("\n")
        assert [f.digest for f in p.files] == digests[: len(p.files)]
        assert p.digest_algo == "sha256"


def test_components_are_source_packages(owned: Ownership) -> None:
    hello = owned.get("rpm/hello")
    assert hello is not None
    assert {p.name for p in hello.packages} == {"hello", "hello-data"}
    assert hello.version == "2:1.0-3"
    assert hello.purl == "pkg:rpm/hello@1.0-3?arch=src&epoch=2"
    assert owned.component_of(b"usr/bin/hello").name == "rpm/hello"
    assert owned.component_of(b"usr/bin/hi").name == "rpm/hello"  # a symlink
    assert owned.component_of(b"usr/share/hello/data.txt").name == "rpm/hello"
    assert hello.mtime_clamp is not None and hello.mtime_clamp > 0
    # Changelog days 2023-01-01, 11-01, 11-13: 3 changes over 316 days before the epoch.
    assert hello.stability == pytest.approx(0.935699, abs=1e-3)


def test_merged_usr_paths_are_canonicalised(owned: Ownership, rpm_tree: Tree) -> None:
    # world ships /bin/world and /lib/world/lib.txt; the tree has bin -> usr/bin.
    assert owned.component_of(b"usr/bin/world").name == "rpm/world"
    assert owned.component_of(b"usr/lib/world/lib.txt").name == "rpm/world"
    assert owned.stats["rpm"].canonicalised == 3
    world = owned.get("rpm/world")
    assert world is not None and world.stability == 0.0  # built today, no changelog


def test_database_itself_is_unclaimed(owned: Ownership) -> None:
    assert owned.component_of(DB.encode()).name == "chunkah/unclaimed"


def test_moved_file_reclaimed_by_sha256(rpm_tree: Tree) -> None:
    tree = Tree(rpm_tree)
    e = tree.remove(b"usr/share/hello/data.txt")
    tree.add(replace(e, path=b"usr/share/data-moved.txt"))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.reclaimed == {b"usr/share/data-moved.txt": "rpm/hello"}


def test_corrupt_blob_names_the_database(rpm_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "rpmdb.sqlite"
    shutil.copy(rpm_root / DB, bad)
    con = sqlite3.connect(bad)
    con.execute("UPDATE Packages SET blob = x'0000000100000010deadbeef' WHERE hnum = 1")
    con.commit()
    con.close()
    tree = Tree(read_dir(rpm_root))
    tree.add(file_entry(tmp_path / "spool", DB.encode(), bad.read_bytes()))
    with pytest.raises(DatabaseError) as info:
        assign_components(tree, build_epoch=EPOCH)
    assert DB in str(info.value) and "row 1" in str(info.value)


def test_not_sqlite_names_the_database(rpm_root: Path, tmp_path: Path) -> None:
    tree = Tree(read_dir(rpm_root))
    tree.add(file_entry(tmp_path, DB.encode(), b"this is not a database" * 100))
    with pytest.raises(DatabaseError, match=r"rpmdb\.sqlite"):
        assign_components(tree, build_epoch=EPOCH)


@pytest.mark.parametrize(
    ("srpm", "name", "version"),
    [
        ("bash-5.2.15-5.fc40.src.rpm", "bash", "5.2.15-5.fc40"),
        ("python-dateutil-2.8.2-1.fc40.src.rpm", "python-dateutil", "2.8.2-1.fc40"),
        ("name-version", "name-version", ""),
        ("nodash", "nodash", ""),
    ],
)
def test_parse_srpm_name(srpm: str, name: str, version: str) -> None:
    assert parse_srpm_name(srpm) == (name, version)


def test_uncheckpointed_wal_is_replayed(rpm_root: Path, tmp_path: Path) -> None:
    # A database whose last transaction still sits in rpmdb.sqlite-wal: opening
    # the main file "immutable" would miss it, so the pair is read from a copy.
    work = tmp_path / "db"
    work.mkdir()
    shutil.copy(rpm_root / DB, work / "rpmdb.sqlite")
    con = sqlite3.connect(work / "rpmdb.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("DELETE FROM Packages WHERE hnum = (SELECT min(hnum) FROM Packages)")
    con.commit()
    main, wal = (work / "rpmdb.sqlite").read_bytes(), (work / "rpmdb.sqlite-wal").read_bytes()
    con.close()
    assert wal
    tree = Tree(read_dir(rpm_root))
    tree.add(file_entry(tmp_path / "s1", DB.encode(), main))
    tree.add(file_entry(tmp_path / "s2", DB.encode() + b"-wal", wal))
    o = assign_components(tree, build_epoch=EPOCH)
    names = {p.name for c in o.components() for p in c.packages}
    assert len(names) == 2  # one of the three packages was deleted in the WAL
    (tmp_path / "main.sqlite").write_bytes(main)
    assert len(read_rpmdb(tmp_path / "main.sqlite", shown_as=DB)) == 3  # main file alone
