"""Python distributions: a real numpy wheel installed with pip --target, placed in a tree."""

from __future__ import annotations

import base64
import csv
import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from support.owners_fixtures import file_entry, numpy_target, tree_under

from chunkah.owners import DatabaseError, Ownership, assign_components
from chunkah.owners.python_dist import canonical_project_name, parse_record
from chunkah.tree import Tree, read_dir
from chunkah.tree.model import EntryType

EPOCH = 1700000000
SITE = b"usr/lib/python3/dist-packages"


@pytest.fixture(scope="module")
def numpy_dir() -> Path:
    return numpy_target("2.4.0")


@pytest.fixture(scope="module")
def numpy_tree(numpy_dir: Path) -> Tree:
    return tree_under(read_dir(numpy_dir), SITE)


@pytest.fixture(scope="module")
def owned(numpy_tree: Tree) -> Ownership:
    return assign_components(numpy_tree, build_epoch=EPOCH)


def _record_rows(numpy_dir: Path) -> list[list[str]]:
    rec = next(numpy_dir.glob("numpy-*.dist-info/RECORD"))
    return list(csv.reader(rec.read_text().splitlines()))


def test_every_record_path_is_claimed(owned: Ownership, numpy_dir: Path) -> None:
    comp = owned.get("python/numpy")
    assert comp is not None
    assert comp.version == "2.4.0"
    assert comp.purl == "pkg:pypi/numpy@2.4.0"
    rows = _record_rows(numpy_dir)
    assert len(rows) > 1000
    for row in rows:
        path = SITE + b"/" + row[0].encode()
        if path in owned.tree:
            assert owned.component_of(path) is comp, path
    # RECORD says ../../bin/f2py (relative to pip's temporary site dir) but
    # pip --target moves scripts to TARGET/bin: claimed back by its sha256.
    assert owned.reclaimed == {
        SITE + b"/bin/f2py": "python/numpy",
        SITE + b"/bin/numpy-config": "python/numpy",
    }
    files = [p for p in owned.tree.paths() if owned.tree[p].type is EntryType.FILE]
    unclaimed = [p for p in files if owned.component_of(p).name == "chunkah/unclaimed"]
    assert unclaimed == [], unclaimed[:10]
    assert owned.unclaimed_bytes == 0
    # The big vendored library is a RECORD path, not a bigfile.
    assert not [c for c in owned.components() if c.kind == "bigfile"]


def test_record_digests_are_urlsafe_base64_sha256(numpy_dir: Path) -> None:
    rec = next(numpy_dir.glob("numpy-*.dist-info/RECORD"))
    rows = parse_record(rec.read_bytes(), b"RECORD")
    checked = 0
    for rel, digest, size in rows:
        if digest is None or size is None or size > 200_000 or rel.startswith(".."):
            continue
        data = (numpy_dir / rel).read_bytes()
        assert digest.algorithm == "sha256"
        assert digest.hex == hashlib.sha256(data).hexdigest()
        assert size == len(data)
        checked += 1
        if checked > 50:
            break
    assert checked > 50


def test_moved_file_reclaimed_by_sha256(numpy_tree: Tree) -> None:
    tree = Tree(numpy_tree)
    src = SITE + b"/numpy/version.py"
    e = tree.remove(src)
    tree.add(replace(e, path=b"opt-version.py"))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.reclaimed[b"opt-version.py"] == "python/numpy"
    # Only files whose size matched a missing entry were hashed: the moved file
    # and the two scripts pip --target relocated.
    scripts = sum(tree[SITE + b"/bin/" + n].size for n in (b"f2py", b"numpy-config"))
    assert o.reclaim_hashed_bytes == e.size + scripts


def test_pyc_follows_its_source(numpy_tree: Tree, tmp_path: Path) -> None:
    tree = Tree(numpy_tree)
    cache = SITE + b"/numpy/__pycache__"
    # pip wrote (and RECORDed) cpython-311 caches; a 3.12 cache written later is not.
    pyc = cache + b"/version.cpython-312.pyc"
    tree.add(file_entry(tmp_path, pyc, b"\x00" * 100))
    orphan = cache + b"/nosuchmodule.cpython-312.pyc"
    tree.add(file_entry(tmp_path, orphan, b"\x00" * 100))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(pyc).name == "python/numpy"
    assert o.component_of(orphan).name == "chunkah/unclaimed"
    assert o.stats["pyc"].present == 2  # the .pyc and its (RECORD-less) __pycache__ dir


def test_directories_follow_their_children(owned: Ownership) -> None:
    # RECORD lists no directories; one whose contents all belong to numpy does too.
    assert owned.component_of(SITE + b"/numpy/__pycache__").name == "python/numpy"
    assert owned.component_of(SITE + b"/numpy").name == "python/numpy"
    # dist-packages also holds numpy.libs and bin/ (all numpy), so it follows too,
    # but usr/ has nothing else either: the rule only needs agreement.
    assert owned.component_of(SITE).name == "python/numpy"


def test_dpkg_wins_over_record(tmp_path: Path) -> None:
    # A Debian python3-* package whose dist-info also has a RECORD.
    tree = Tree()
    for d in (
        b"usr",
        b"usr/lib",
        b"usr/lib/python3",
        SITE,
        SITE + b"/m",
        SITE + b"/m-1.0.dist-info",
        b"var",
        b"var/lib",
        b"var/lib/dpkg",
        b"var/lib/dpkg/info",
    ):
        tree.add(replace(file_entry(tmp_path, d, b""), type=EntryType.DIR, size=0, content=None))
    body = b"x = 1\n"
    h = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=")
    tree.add(file_entry(tmp_path, SITE + b"/m/__init__.py", body))
    tree.add(
        file_entry(
            tmp_path,
            SITE + b"/m-1.0.dist-info/RECORD",
            b"m/__init__.py,sha256=" + h + b",6\nm-1.0.dist-info/RECORD,,\n",
        )
    )
    tree.add(
        file_entry(
            tmp_path,
            b"var/lib/dpkg/status",
            b"Package: python3-m\nStatus: install ok installed\nVersion: 1.0-1\n"
            b"Architecture: all\nSource: m\n",
        )
    )
    tree.add(
        file_entry(
            tmp_path,
            b"var/lib/dpkg/info/python3-m.list",
            b"/usr/lib/python3/dist-packages/m/__init__.py\n",
        )
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(SITE + b"/m/__init__.py").name == "dpkg/m"
    assert o.component_of(SITE + b"/m-1.0.dist-info/RECORD").name == "python/m"


def test_canonical_project_name() -> None:
    assert canonical_project_name("Foo.Bar__baz") == "foo-bar-baz"


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (b"a.py,md4=abc,3\n", "unknown hash"),
        (b"a.py,sha256=" + b"A" * 43 + b",notanumber\n", "not a number"),
        (b"a.py,sha256=abcd,3\n", "digest has 3 bytes"),
        (b"\xff\xfe,,\n", "not UTF-8"),
        (b"a.py,sha256=!!!!,3\n", "bad base64"),
    ],
)
def test_corrupt_record_names_the_file(record: bytes, needle: str) -> None:
    with pytest.raises(DatabaseError) as info:
        parse_record(record, b"x/y.dist-info/RECORD")
    assert needle in str(info.value) and "x/y.dist-info/RECORD" in str(info.value)
