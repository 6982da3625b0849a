"""Hypothesis: the database parsers raise only our own errors, whatever the bytes."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.owners_fixtures import file_entry

from chunkah.owners import DatabaseError, assign_components
from chunkah.owners.alpm import parse_alpm_sections, parse_mtree
from chunkah.owners.apk import parse_installed
from chunkah.owners.dpkg import parse_changelog_dates, parse_control_stanzas
from chunkah.owners.python_dist import parse_record
from chunkah.owners.rpm import package_from_header
from chunkah.owners.rpmheader import HeaderError
from chunkah.tree.model import Entry, EntryType, Tree

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines that look like the real formats, so the fuzzer gets past the first check.
_dpkg_lines = st.sampled_from(
    [
        b"Package: p",
        b"Status: install ok installed",
        b"Source: s (1.0)",
        b"Source: ",
        b"Version: 1",
        b"Conffiles:",
        b" /etc/x 0123456789abcdef0123456789abcdef",
        b" /etc/y",
        b"",
        b"Architecture: amd64",
    ]
)


def _text(lines: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(lines, st.binary(max_size=40)), max_size=20).map(b"\n".join)


@FUZZ
@given(_text(_dpkg_lines))
def test_dpkg_status(data: bytes) -> None:
    with contextlib.suppress(DatabaseError):
        list(parse_control_stanzas(data, b"var/lib/dpkg/status"))


@FUZZ
@given(st.binary(max_size=400) | _text(st.just(b" -- A <a@b>  Mon, 01 Jan 2024 00:00:00 +0000")))
def test_changelog(data: bytes) -> None:
    assert all(isinstance(t, int) for t in parse_changelog_dates(data))


@FUZZ
@given(_text(st.sampled_from([b"P:a", b"o:b", b"F:usr/lib", b"R:x", b"Z:Q1AAAA", b"t:12", b""])))
def test_apk_installed(data: bytes) -> None:
    with contextlib.suppress(DatabaseError):
        parse_installed(data)


@FUZZ
@given(_text(st.sampled_from([b"%NAME%", b"%FILES%", b"usr/bin/x", b"", b"/set type=file"])))
def test_alpm_sections_and_mtree(data: bytes) -> None:
    with contextlib.suppress(DatabaseError):
        parse_alpm_sections(data, b"desc")
    parse_mtree(data)


@FUZZ
@given(
    _text(st.sampled_from([b"a.py,sha256=" + b"A" * 43 + b",3", b"b,,", b"c,md5=AAAA,x", b'"q,']))
)
def test_python_record(data: bytes) -> None:
    with contextlib.suppress(DatabaseError):
        parse_record(data, b"x.dist-info/RECORD")


_TAGS = st.sampled_from([1000, 1001, 1003, 1006, 1027, 1028, 1030, 1035, 1116, 1117, 1118, 5011, 7])


@st.composite
def _headers(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 8))
    data = draw(st.binary(max_size=200))
    index = b"".join(
        struct.pack(
            ">iIiI",
            draw(_TAGS),
            draw(st.integers(0, 10)),
            draw(st.integers(-5, len(data) + 5)),
            draw(st.integers(0, 300)),
        )
        for _ in range(n)
    )
    dl = draw(st.sampled_from([len(data), len(data) + 1, 0, 2**31]))
    blob = struct.pack(">II", n, dl) + index + data
    return blob[: draw(st.integers(0, len(blob)))] if draw(st.booleans()) else blob


@FUZZ
@given(_headers() | st.binary(max_size=100))
def test_rpm_header(blob: bytes) -> None:
    with contextlib.suppress(HeaderError):
        package_from_header(blob)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(status=_text(_dpkg_lines), listing=st.binary(max_size=200), md5=st.binary(max_size=200))
def test_whole_dpkg_source(tmp_path: Path, status: bytes, listing: bytes, md5: bytes) -> None:
    dirs = [b"", b"var", b"var/lib", b"var/lib/dpkg", b"var/lib/dpkg/info"]
    tree = Tree(Entry(path=d, type=EntryType.DIR) for d in dirs)
    tree.add(file_entry(tmp_path, b"var/lib/dpkg/status", status))
    tree.add(file_entry(tmp_path, b"var/lib/dpkg/info/p.list", listing))
    tree.add(file_entry(tmp_path, b"var/lib/dpkg/info/p.md5sums", md5))
    try:
        o = assign_components(tree, build_epoch=1700000000)
    except DatabaseError:
        return
    assert sorted(p for c in o.components() for p in o.paths_of(c.name)) == sorted(tree.paths())


@FUZZ
@given(
    st.lists(st.sampled_from([b"/", b".", b"..", b"a", b"bc", b"./", b"//"]), max_size=8).map(
        b"".join
    )
)
def test_db_path_key_matches_normalize_path(raw: bytes) -> None:
    from chunkah.owners.canon import db_path_key
    from chunkah.tree.model import normalize_path

    assert db_path_key(raw) == normalize_path(raw)
