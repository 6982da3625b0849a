"""The source-independent parts: canonicaliser, xattrs, big files, precedence, stability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from support.owners_fixtures import file_entry

from chunkah.owners import UNCLAIMED, PathCanonicalizer, assign_components
from chunkah.owners.purl import make_purl
from chunkah.owners.stability import (
    DEFAULT_PACKAGE_STABILITY,
    QUIET_YEAR_STABILITY,
    interval_stability,
    stability_from_dates,
)
from chunkah.tree.model import Entry, EntryType, Tree

EPOCH = 1700000000
DAY = 86400
MiB = 1 << 20


def d(path: bytes, **kw: object) -> Entry:
    return Entry(path=path, type=EntryType.DIR, mode=0o755, **kw)  # type: ignore[arg-type]


def ln(path: bytes, target: bytes) -> Entry:
    return Entry(path=path, type=EntryType.SYMLINK, mode=0o777, link_target=target)


def f(path: bytes, size: int = 10, **kw: object) -> Entry:
    return Entry(path=path, type=EntryType.FILE, size=size, **kw)  # type: ignore[arg-type]


def comp_xattr(value: str) -> tuple[tuple[str, bytes], ...]:
    return (("user.component", value.encode()),)


# --- canonicaliser -----------------------------------------------------------


def test_merged_usr_symlinks_resolve_parents_only() -> None:
    tree = Tree(
        [
            d(b"usr"),
            d(b"usr/bin"),
            d(b"usr/lib"),
            d(b"usr/lib64"),
            ln(b"bin", b"usr/bin"),
            ln(b"lib", b"/usr/lib"),
            ln(b"lib64", b"usr/lib64"),
            ln(b"usr/lib/x", b"../lib64"),
            ln(b"usr/bin/sh", b"dash"),
        ]
    )
    c = PathCanonicalizer(tree)
    assert c.canonical(b"/bin/ls") == b"usr/bin/ls"
    assert c.canonical(b"/lib/x86_64-linux-gnu/libc.so.6") == b"usr/lib/x86_64-linux-gnu/libc.so.6"
    assert c.canonical(b"/lib/x/ld.so") == b"usr/lib64/ld.so"  # relative link inside /usr
    assert c.canonical(b"/bin/sh") == b"usr/bin/sh"  # the last component is kept
    assert c.resolve(b"/bin/sh") == b"usr/bin/dash"
    assert c.canonical(b"bin") == b"bin"
    assert c.canonical("/usr/bin/ls") == b"usr/bin/ls"


def test_symlinks_never_leave_the_tree() -> None:
    tree = Tree([ln(b"up", b"../../../../etc"), ln(b"abs", b"/etc")])
    c = PathCanonicalizer(tree)
    assert c.canonical(b"/up/passwd") == b"etc/passwd"
    assert c.canonical(b"/abs/passwd") == b"etc/passwd"
    assert c.canonical(b"/../../x") == b"x"


def test_symlink_loops_are_bounded() -> None:
    tree = Tree([ln(b"a", b"b"), ln(b"b", b"a"), ln(b"self", b"self/x")])
    c = PathCanonicalizer(tree)
    # Unresolvable: the path simply does not exist in the tree.
    assert c.canonical(b"/a/file") not in tree
    assert c.canonical(b"/self/file") not in tree


# --- xattrs -------------------------------------------------------------------


def test_xattr_inheritance_and_override() -> None:
    tree = Tree(
        [
            d(b""),
            d(b"a", xattrs=comp_xattr("A")),
            f(b"a/other"),
            d(b"a/b", xattrs=comp_xattr("B")),
            d(b"a/b/c"),
            d(b"a/b/c/d", xattrs=comp_xattr("D")),
            f(b"a/b/c/d/file"),
            ln(b"a/b/link", b"../other"),  # symlinks carry no user xattrs but inherit
            f(b"a/special", xattrs=comp_xattr("S")),
            d(b"x", xattrs=comp_xattr("X")),
            f(b"x/file"),
            f(b"noattr"),
        ]
    )
    o = assign_components(tree, build_epoch=EPOCH)
    want = {
        b"a": "xattr/A",
        b"a/other": "xattr/A",
        b"a/b": "xattr/B",
        b"a/b/c": "xattr/B",
        b"a/b/c/d": "xattr/D",
        b"a/b/c/d/file": "xattr/D",
        b"a/b/link": "xattr/B",
        b"a/special": "xattr/S",
        b"x": "xattr/X",
        b"x/file": "xattr/X",
        b"noattr": UNCLAIMED.name,
    }
    assert {p: o.component_of(p).name for p in want} == want


def test_update_interval_sets_stability_and_is_inherited() -> None:
    tree = Tree(
        [
            d(b"app", xattrs=(*comp_xattr("app"), ("user.update-interval", b"weekly"))),
            f(b"app/bin"),
            d(b"data", xattrs=comp_xattr("data")),
            f(b"data/x", xattrs=(("user.update-interval", b"30d"),)),
            d(b"plain", xattrs=comp_xattr("plain")),
        ]
    )
    o = assign_components(tree, build_epoch=EPOCH)
    app = o.get("xattr/app")
    assert app is not None and app.stability == pytest.approx(math.exp(-1), abs=1e-6)
    data = o.get("xattr/data")
    assert data is not None and data.stability == pytest.approx(math.exp(-7 / 30), abs=1e-6)
    plain = o.get("xattr/plain")
    assert plain is not None and plain.stability == 0.0


def test_bad_xattr_values_are_input_errors() -> None:
    from chunkah.owners import DatabaseError

    with pytest.raises(DatabaseError, match="update-interval"):
        assign_components(
            Tree([f(b"x", xattrs=(*comp_xattr("x"), ("user.update-interval", b"soon")))]),
            build_epoch=EPOCH,
        )
    with pytest.raises(DatabaseError, match="not UTF-8"):
        assign_components(Tree([f(b"x", xattrs=(("user.component", b"\xff"),))]), build_epoch=EPOCH)


def _mini_dpkg(tmp_path: Path, extra: list[Entry]) -> Tree:
    """A tree with a one-package dpkg database owning usr/bin/tool."""
    entries = [
        d(b""),
        d(b"usr"),
        d(b"usr/bin"),
        d(b"var"),
        d(b"var/lib"),
        d(b"var/lib/dpkg"),
        d(b"var/lib/dpkg/info"),
        file_entry(
            tmp_path,
            b"var/lib/dpkg/status",
            b"Package: tool\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n",
        ),
        file_entry(
            tmp_path, b"var/lib/dpkg/info/tool.list", b"/.\n/usr\n/usr/bin\n/usr/bin/tool\n"
        ),
        *extra,
    ]
    return Tree(entries)


def test_precedence_xattr_over_package_over_bigfile(tmp_path: Path) -> None:
    tree = _mini_dpkg(
        tmp_path,
        [
            f(b"usr/bin/tool", size=2 * MiB, xattrs=comp_xattr("mine")),
            f(b"usr/bin/big", size=2 * MiB),
            f(b"usr/bin/small", size=MiB - 1),
        ],
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"usr/bin/tool").name == "xattr/mine"
    assert o.component_of(b"usr/bin").name == "dpkg/tool"
    assert o.component_of(b"usr/bin/big").name == "bigfile/usr/bin/big"
    assert o.component_of(b"usr/bin/small").name == UNCLAIMED.name
    # Without the xattr, the package owns it and it is not a big file.
    tree.add(f(b"usr/bin/tool", size=2 * MiB))
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"usr/bin/tool").name == "dpkg/tool"
    assert o.bytes_of("dpkg/tool") == 2 * MiB + len(
        b"/.\n/usr\n/usr/bin\n/usr/bin/tool\n"
    )  # + tool.list


def test_xattr_naming_a_package_component_joins_it(tmp_path: Path) -> None:
    tree = _mini_dpkg(
        tmp_path,
        [f(b"usr/bin/tool"), d(b"opt", xattrs=comp_xattr("dpkg/tool")), f(b"opt/plugin")],
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"opt/plugin").name == "dpkg/tool"
    assert o.get("xattr/dpkg/tool") is None


def test_big_files_keep_hardlinks_together(tmp_path: Path) -> None:
    tree = _mini_dpkg(
        tmp_path,
        [
            d(b"data"),
            f(b"data/a", size=3 * MiB, hardlink_group=b"data/a"),
            f(b"data/b", size=3 * MiB, hardlink_group=b"data/a"),
            f(b"data/c", size=3 * MiB),
        ],
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"data/a").name == "bigfile/data/a"
    assert o.component_of(b"data/b").name == "bigfile/data/a"
    assert o.bytes_of("bigfile/data/a") == 3 * MiB  # a hardlink set counts once
    assert o.component_of(b"data/c").name == "bigfile/data/c"
    assert o.total_bytes == tree.total_size()


def test_hardlink_to_a_packaged_file_joins_the_package(tmp_path: Path) -> None:
    tree = _mini_dpkg(
        tmp_path,
        [
            f(b"usr/bin/tool", size=5, hardlink_group=b"usr/bin/tool"),
            f(b"usr/bin/tool-alias", size=5, hardlink_group=b"usr/bin/tool"),
        ],
    )
    o = assign_components(tree, build_epoch=EPOCH)
    assert o.component_of(b"usr/bin/tool-alias").name == "dpkg/tool"


def test_every_path_gets_exactly_one_component(tmp_path: Path) -> None:
    tree = _mini_dpkg(tmp_path, [f(b"usr/bin/tool"), f(b"etc-file"), d(b"empty")])
    o = assign_components(tree, build_epoch=EPOCH)
    seen = [p for c in o.components() for p in o.paths_of(c.name)]
    assert sorted(seen) == sorted(tree.paths())
    assert o.component_of(b"empty").name == UNCLAIMED.name


# --- stability and purls ------------------------------------------------------


def test_stability_formula() -> None:
    assert stability_from_dates([], build_epoch=EPOCH) == DEFAULT_PACKAGE_STABILITY
    assert stability_from_dates([EPOCH - 400 * DAY], build_epoch=EPOCH) == QUIET_YEAR_STABILITY
    assert stability_from_dates([EPOCH - 3600], build_epoch=EPOCH) == 0.0
    day0 = (EPOCH // DAY) * DAY
    # 4 distinct days over 100 days: exp(-7 * 4 / 100 (+ part of today)).
    dates = [day0 - 100 * DAY, day0 - 50 * DAY, day0 - 20 * DAY, day0 - 20 * DAY + 60, day0 - DAY]
    span = (EPOCH - (day0 - 100 * DAY)) / DAY
    assert stability_from_dates(dates, build_epoch=EPOCH) == pytest.approx(
        math.exp(-7 * 4 / span), abs=1e-6
    )
    # Reproducible: the build epoch, not the clock; later history moves "now" up.
    later = [EPOCH + 10 * DAY]
    assert stability_from_dates(later, build_epoch=EPOCH) == 0.0


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("daily", math.exp(-7)),
        ("weekly", math.exp(-1)),
        ("14", math.exp(-0.5)),
        ("never", 1.0),
        ("soon", None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_interval_stability(value: str, want: float | None) -> None:
    got = interval_stability(value)
    assert got == (pytest.approx(want, abs=1e-6) if want is not None else None)


def test_purls_are_percent_encoded() -> None:
    assert (
        make_purl(
            "deb", "glibc", "2.36-9+deb12u4", namespace="debian", qualifiers={"arch": "source"}
        )
        == "pkg:deb/debian/glibc@2.36-9%2Bdeb12u4?arch=source"
    )
    assert make_purl("rpm", "bash", "1:5.2", qualifiers={"epoch": "", "arch": "src"}) == (
        "pkg:rpm/bash@1%3A5.2?arch=src"
    )
