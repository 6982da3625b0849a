"""The /etc three-way merge: pure decision tables, hypothesis properties, the listing reader."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from chunkah.host.etcmerge import (
    EtcConflict,
    EtcEntry,
    Source,
    merge_etc,
    scan_listing,
    show_etc_path,
)

ROOT = EtcEntry("dir", 0o755)


def f(content: str, mode: int = 0o644, uid: int = 0) -> EtcEntry:
    return EtcEntry("file", mode, uid, 0, sha256=content.encode().ljust(32, b"\0"))


def d(mode: int = 0o755) -> EtcEntry:
    return EtcEntry("dir", mode)


def ln(target: str) -> EtcEntry:
    return EtcEntry("symlink", 0o777, target=target.encode())


def tree(**entries: EtcEntry) -> dict[bytes, EtcEntry]:
    out = {b"": ROOT}
    for name, e in entries.items():
        out[name.replace("__", "/").encode()] = e
    return out


def merged(base, local, new):  # type: ignore[no-untyped-def]
    m = merge_etc(base, local, new)
    out = {}
    for p, s in m.result.items():
        out[p] = (local if s is Source.LOCAL else new)[p]
    return out, {c.path: c.kind for c in m.conflicts}


# --- the table ------------------------------------------------------------------------


def test_untouched_files_follow_the_image_including_additions_and_deletions() -> None:
    base = tree(a=f("1"), gone=f("x"), same=f("s"))
    new = tree(a=f("2"), added=f("n"), same=f("s"))
    out, conflicts = merged(base, dict(base), new)
    assert out == new
    assert conflicts == {}


def test_admin_changes_are_kept() -> None:
    base = tree(a=f("1"), b=f("1"), c=f("1"))
    local = tree(a=f("mine"), b=f("1", mode=0o600), mine=f("added"))  # c deleted
    new = dict(base)
    out, conflicts = merged(base, local, new)
    assert out == local
    assert conflicts == {}


def test_both_changed_keeps_admin_and_records_a_conflict() -> None:
    base = tree(a=f("1"), b=f("1"), c=f("1"), d=f("1"), e=f("1"))
    local = tree(a=f("mine"), b=f("same"), d=f("mine"), e=f("1", uid=5))  # c deleted
    new = tree(a=f("theirs"), b=f("same"), c=f("theirs"), e=f("1", mode=0o600))  # d deleted
    local[b"x"] = f("mine")
    new[b"x"] = f("theirs")
    out, conflicts = merged(base, local, new)
    assert out == local
    assert conflicts == {
        b"a": "both-changed",
        b"c": "local-deleted",
        b"d": "new-deleted",
        b"e": "both-changed",
        b"x": "both-added",
    }  # b: both made the same change, no conflict


def test_type_owner_and_symlink_target_count_as_changes() -> None:
    base = tree(a=ln("x"), b=f("1"), c=d())
    local = tree(a=ln("y"), b=ln("1"), c=d(0o700))
    out, conflicts = merged(base, local, dict(base))
    assert out == local and conflicts == {}


def test_image_removes_a_directory_holding_admin_files() -> None:
    base = tree(conf=d(), conf__a=f("1"))
    local = tree(conf=d(), conf__a=f("1"), conf__mine=f("m"))
    new = tree(conf=ln("/usr/share/conf"))  # the image replaced the directory by a symlink
    out, conflicts = merged(base, local, new)
    assert out == tree(conf=d(), conf__mine=f("m"))
    assert conflicts == {b"conf": "dir-kept"}


def test_image_adds_below_a_directory_the_admin_removed() -> None:
    base = tree(conf=d(), conf__a=f("1"))
    local = tree()
    new = tree(conf=d(), conf__a=f("1"), conf__new=f("n"), conf__sub=d(), conf__sub__x=f("x"))
    out, conflicts = merged(base, local, new)
    assert out == tree()
    assert conflicts == {
        b"conf__new".replace(b"__", b"/"): "parent-removed",
        b"conf/sub": "parent-removed",
        b"conf/sub/x": "parent-removed",
    }


def test_first_deployment_takes_the_image() -> None:
    new = tree(a=f("1"), s=d(), s__b=ln("../a"))
    out, conflicts = merged({}, {}, new)
    assert out == new and conflicts == {}


def test_conflict_json_round_trip() -> None:
    c = EtcConflict(b"ssh/sshd_config", "both-changed", "why")
    assert c.to_json() == {"path": "/etc/ssh/sshd_config", "kind": "both-changed", "reason": "why"}
    assert EtcConflict.from_json(c.to_json()) == c
    assert show_etc_path(b"") == "/etc"
    assert show_etc_path(b"a\xff") == "/etc/a\\xff"


# --- properties ------------------------------------------------------------------------

entries = st.one_of(
    st.builds(f, st.sampled_from(["a", "b", "c"]), st.sampled_from([0o644, 0o600])),
    st.builds(ln, st.sampled_from(["x", "y"])),
    st.builds(d, st.sampled_from([0o755, 0o700])),
)
flat_paths = st.sampled_from([b"p0", b"p1", b"p2", b"p3", b"p4", b"p5"])
flat_listing = st.dictionaries(flat_paths, entries, max_size=6).map(lambda m: {b"": ROOT, **m})


@settings(max_examples=400, deadline=None)
@given(flat_listing, flat_listing, flat_listing)
def test_flat_merge_invariants(base, local, new) -> None:  # type: ignore[no-untyped-def]
    out, conflicts = merged(base, local, new)
    for p in set(base) | set(local) | set(new):
        b, loc, n = base.get(p), local.get(p), new.get(p)
        if loc == b:
            assert out.get(p) == n, p  # admin did not touch it: the image's version
        else:
            assert out.get(p) == loc, p  # admin's version (or admin's deletion)
        both_changed_differently = loc != b and n != b and n != loc
        assert (p in conflicts) == both_changed_differently, p


def _nested_listing() -> st.SearchStrategy[dict[bytes, EtcEntry]]:
    """A consistent tree over a small universe of nested paths."""
    universe = [b"a", b"a/x", b"a/y", b"a/s", b"a/s/z", b"b", b"b/x", b"c"]

    @st.composite
    def build(draw: st.DrawFn) -> dict[bytes, EtcEntry]:
        out = {b"": ROOT}
        for p in universe:
            parent = p.rpartition(b"/")[0]
            if parent and (parent not in out or not out[parent].is_dir):
                continue
            if draw(st.booleans()):
                out[p] = draw(entries)
        return out

    return build()


@settings(max_examples=400, deadline=None)
@given(_nested_listing(), _nested_listing(), _nested_listing())
def test_nested_merge_is_a_tree_and_admin_always_wins(base, local, new) -> None:  # type: ignore[no-untyped-def]
    out, conflicts = merged(base, local, new)
    assert b"" in out
    for p in out:
        if p:
            parent = p.rpartition(b"/")[0]
            assert parent in out and out[parent].is_dir, p  # the result is a tree
    for p in set(base) | set(local) | set(new):
        b, loc, n = base.get(p), local.get(p), new.get(p)
        if loc != b:
            assert out.get(p) == loc, p  # an admin change is never lost
            assert (p in conflicts) == (n != b and n != loc), p
        elif conflicts.get(p) == "dir-kept":
            assert loc is not None and loc.is_dir and out[p] == loc, p
        elif conflicts.get(p) == "parent-removed":
            assert p not in out and n is not None, p
        else:
            assert p not in conflicts, p
            assert out.get(p) == n, p  # untouched by the admin: the image's version


# --- the listing reader ----------------------------------------------------------------


def test_scan_listing_compares_what_matters(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "f").write_bytes(b"hello")
        (root / "l").symlink_to("sub/f")
        os.utime(root / "sub" / "f", (1, 1))
    os.utime(b / "sub" / "f", (999, 999))  # mtime is not compared
    la, lb = scan_listing(a), scan_listing(b)
    assert la == lb
    assert set(la) == {b"", b"sub", b"sub/f", b"l"}
    assert la[b"l"].target == b"sub/f"
    (b / "sub" / "f").chmod(0o600)
    assert scan_listing(b)[b"sub/f"] != la[b"sub/f"]
    (b / "sub" / "f").chmod(0o644)
    (b / "sub" / "f").write_bytes(b"hellO")
    assert scan_listing(b)[b"sub/f"] != la[b"sub/f"]
    os.setxattr(a / "sub", "user.k", b"v")
    assert scan_listing(a)[b"sub"].xattrs == (("user.k", b"v"),)
    assert scan_listing(tmp_path / "missing") == {}
    (tmp_path / "link").symlink_to(a)
    assert scan_listing(tmp_path / "link") == {}  # an /etc that is a symlink is not followed
