"""Safe extraction: each hostile archive is refused, named, and writes nothing outside."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from chunkah.tree import TarFormatError, UnsafeEntryError, extract_tar


def _member(name: str | bytes, kind: bytes = tarfile.REGTYPE, **kw: object) -> tuple:
    return (name, kind, kw)


def _archive(*members: tuple) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        for name, kind, kw in members:
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            ti = tarfile.TarInfo(name)
            ti.type = kind
            data = kw.pop("data", b"")
            for k, v in kw.items():
                setattr(ti, k, v)
            if kind == tarfile.REGTYPE:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    buf.seek(0)
    return buf


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, outside): dest inside a parent that also holds an 'outside' directory."""
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"original")
    return dest, outside


def _snapshot(path: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        out[str(p)] = (
            "link:" + os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        )
    return out


CASES = {
    "dotdot": ([_member("../outside/victim", data=b"pwned")], "../outside/victim", "'..'"),
    "dotdot-inner": ([_member("a/../../outside/x", data=b"x")], "a/../../outside/x", "'..'"),
    "absolute": ([_member("/tmp/abs-escape", data=b"x")], "/tmp/abs-escape", "absolute"),
    "symlink-abs": (
        [
            _member("link", tarfile.SYMTYPE, linkname="/"),
            _member("link/tmp/chunkah-escape", data=b"x"),
        ],
        "link/tmp/chunkah-escape",
        "symlink to an absolute path",
    ),
    "symlink-rel": (
        [
            _member("link", tarfile.SYMTYPE, linkname="../outside"),
            _member("link/victim", data=b"pwned"),
        ],
        "link/victim",
        "outside the destination",
    ),
    "symlink-chain": (
        [
            _member("d", tarfile.DIRTYPE, mode=0o755),
            _member("d/a", tarfile.SYMTYPE, linkname="b"),
            _member("d/b", tarfile.SYMTYPE, linkname="../c"),
            _member("c", tarfile.SYMTYPE, linkname="../outside"),
            _member("d/a/victim", data=b"pwned"),
        ],
        "d/a/victim",
        "outside the destination",
    ),
    "symlink-loop": (
        [
            _member("a", tarfile.SYMTYPE, linkname="b"),
            _member("b", tarfile.SYMTYPE, linkname="a"),
            _member("a/x", data=b"x"),
        ],
        "a/x",
        "too many levels",
    ),
    "hardlink-abs": (
        [_member("h", tarfile.LNKTYPE, linkname="/etc/passwd")],
        "h",
        "absolute",
    ),
    "hardlink-dotdot": (
        [_member("h", tarfile.LNKTYPE, linkname="../outside/victim")],
        "h",
        "'..'",
    ),
    "hardlink-through-symlink": (
        [
            _member("link", tarfile.SYMTYPE, linkname="../outside"),
            _member("h", tarfile.LNKTYPE, linkname="link/victim"),
        ],
        "h",
        "not a regular file extracted earlier",
    ),
    "hardlink-to-symlink": (
        [
            _member("link", tarfile.SYMTYPE, linkname="../outside/victim"),
            _member("h", tarfile.LNKTYPE, linkname="link"),
        ],
        "h",
        "not a regular file extracted earlier",
    ),
    "hardlink-not-in-archive": (
        [_member("h", tarfile.LNKTYPE, linkname="preexisting")],
        "h",
        "not a regular file extracted earlier",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_entry_refused(box: tuple[Path, Path], case: str) -> None:
    dest, outside = box
    (dest / "preexisting").write_bytes(b"p")
    members, name, reason = CASES[case]
    before = _snapshot(outside)
    with pytest.raises(UnsafeEntryError) as info:
        extract_tar(_archive(*members), dest)
    assert reason in str(info.value)
    assert info.value.name == os.fsencode(name)
    assert name in str(info.value)
    assert _snapshot(outside) == before
    assert not Path("/tmp/abs-escape").exists()
    assert not Path("/tmp/chunkah-escape").exists()


def test_preexisting_symlink_in_dest_is_replaced_not_followed(box: tuple[Path, Path]) -> None:
    dest, outside = box
    (dest / "victim").symlink_to(outside / "victim")
    extract_tar(_archive(_member("victim", data=b"new", mode=0o644)), dest)
    assert (outside / "victim").read_bytes() == b"original"
    assert not (dest / "victim").is_symlink()
    assert (dest / "victim").read_bytes() == b"new"


def test_symlink_inside_dest_is_followed(box: tuple[Path, Path]) -> None:
    dest, _ = box
    extract_tar(
        _archive(
            _member("usr", tarfile.DIRTYPE, mode=0o755),
            _member("usr/lib", tarfile.DIRTYPE, mode=0o755),
            _member("lib", tarfile.SYMTYPE, linkname="usr/lib"),
            _member("lib/x", data=b"x", mode=0o644),
        ),
        dest,
    )
    assert (dest / "usr/lib/x").read_bytes() == b"x"


def test_symlink_created_but_not_followed_at_last_component(box: tuple[Path, Path]) -> None:
    dest, outside = box
    extract_tar(
        _archive(
            _member("victim", tarfile.SYMTYPE, linkname=str(outside / "victim")),
            _member("victim", data=b"replaced", mode=0o644),
        ),
        dest,
    )
    assert (outside / "victim").read_bytes() == b"original"
    assert (dest / "victim").read_bytes() == b"replaced"


def test_hardlink_within_archive(box: tuple[Path, Path]) -> None:
    dest, _ = box
    extract_tar(
        _archive(
            _member("a", data=b"shared", mode=0o640),
            _member("sub/b", tarfile.LNKTYPE, linkname="a"),
        ),
        dest,
    )
    assert os.stat(dest / "a").st_ino == os.stat(dest / "sub/b").st_ino
    assert (dest / "sub").is_dir()  # missing parent made


def test_file_replaced_by_symlink_is_no_longer_a_link_target(box: tuple[Path, Path]) -> None:
    dest, outside = box
    with pytest.raises(UnsafeEntryError, match="'h'"):
        extract_tar(
            _archive(
                _member("a", data=b"x"),
                _member("a", tarfile.SYMTYPE, linkname=str(outside / "victim")),
                _member("h", tarfile.LNKTYPE, linkname="a"),
            ),
            dest,
        )
    assert (outside / "victim").read_bytes() == b"original"


def test_non_utf8_and_long_names(box: tuple[Path, Path]) -> None:
    dest, _ = box
    long = b"d" * 120 + b"/" + b"\xff" * 130
    extract_tar(_archive(_member(long, data=b"ok", mode=0o600)), dest)
    assert (Path(os.fsdecode(dest)) / os.fsdecode(long)).read_bytes() == b"ok"


def test_devices_skipped_when_not_allowed(box: tuple[Path, Path]) -> None:
    dest, _ = box
    result = extract_tar(
        _archive(
            _member("null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            _member("fifo", tarfile.FIFOTYPE, mode=0o600),
        ),
        dest,
        create_devices=False,
    )
    assert result.skipped == (b"null",)
    assert not (dest / "null").exists()
    assert (dest / "fifo").is_fifo()


def test_truncated_archive(box: tuple[Path, Path]) -> None:
    dest, _ = box
    data = _archive(_member("f", data=b"x" * 5000)).getvalue()[:1500]
    with pytest.raises(TarFormatError, match="f"):
        extract_tar(io.BytesIO(data), dest)


def test_root_entry_must_be_directory(box: tuple[Path, Path]) -> None:
    dest, _ = box
    with pytest.raises(UnsafeEntryError, match="root"):
        extract_tar(_archive(_member("./", tarfile.SYMTYPE, linkname="/etc")), dest)
