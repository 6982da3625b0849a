"""Per-file deltas, the pure parts: pairing, encodings, the index format, the planner."""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkah.delta.encode import (
    BSDIFF_XZ,
    BSDIFF_ZSTD,
    GZIP_INNER,
    ZSTD_PATCH,
    DeltaError,
    apply_delta,
    encode,
    encode_best,
)
from chunkah.delta.index import (
    DeltaIndexError,
    DeltaOffer,
    decode_index,
    encode_index,
    offers_by_target,
)
from chunkah.delta.pairing import FileInfo, normalize_path, pair_files, similarity_key
from chunkah.delta.regzip import GzipError
from chunkah.host.index import ChunkRef, FrameRef, IndexEntry, LayerIndex
from chunkah.host.plan import inventory_from_indexes, plan_update


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def fi(
    path: str, content: bytes | int, package: str | None = None, size: int | None = None
) -> FileInfo:
    data = content if isinstance(content, bytes) else str(content).encode()
    return FileInfo(
        path.encode(), sha(data), size if size is not None else max(1, len(data)), package
    )


# --- pairing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko", "usr/lib/modules/6.1.0-56-amd64/kernel/fs/ext4/ext4.ko"),
        ("boot/vmlinuz-6.1.0-50-amd64", "boot/vmlinuz-6.1.0-56-amd64"),
        ("usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "usr/lib/x86_64-linux-gnu/libz.so.1.3"),
        ("usr/lib/x86_64-linux-gnu/libc-2.36.so", "usr/lib/x86_64-linux-gnu/libc-2.37.so"),
        ("site/numpy.libs/libscipy_openblas64_-fdde5778.so", "site/numpy.libs/libscipy_openblas64_-32a4b2a6.so"),
        ("site/numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0", "site/numpy.libs/libgfortran-040039e1-11223344.so.5.0.0"),
        ("site/numpy-2.4.0.dist-info/RECORD", "site/numpy-2.4.6.dist-info/RECORD"),
        ("usr/share/doc/openssl/x-3.0.17-1~deb12u2", "usr/share/doc/openssl/x-3.0.17-1~deb12u3"),
    ],
)  # fmt: skip
def test_normalize_pairs_versions_and_hashes(a: str, b: str) -> None:
    assert normalize_path(a.encode()) == normalize_path(b.encode())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("usr/bin/python3.11", "usr/bin/python3.12x"),
        ("usr/lib/libfoo.so.1", "usr/lib/libbar.so.1"),
        ("etc/ssl/certs/a.pem", "etc/ssl/certs/b.pem"),
        ("usr/bin/sha256sum", "usr/bin/sha512sum"),  # digits glued to letters are names
    ],
)
def test_normalize_keeps_names_apart(a: str, b: str) -> None:
    assert normalize_path(a.encode()) != normalize_path(b.encode())


def test_pairing_kernel_module_dir_rename() -> None:
    old = [
        fi("usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko", "old-ext4", "linux-image-6.1.0-50-amd64"),
        fi("usr/lib/modules/6.1.0-50-amd64/kernel/fs/xfs/xfs.ko", "old-xfs", "linux-image-6.1.0-50-amd64"),
        fi("boot/vmlinuz-6.1.0-50-amd64", "old-kernel", "linux-image-6.1.0-50-amd64"),
        fi("usr/bin/same", "same"),
    ]  # fmt: skip
    new = [
        fi("usr/lib/modules/6.1.0-56-amd64/kernel/fs/ext4/ext4.ko", "new-ext4", "linux-image-6.1.0-56-amd64"),
        fi("usr/lib/modules/6.1.0-56-amd64/kernel/fs/xfs/xfs.ko", "new-xfs", "linux-image-6.1.0-56-amd64"),
        fi("boot/vmlinuz-6.1.0-56-amd64", "new-kernel", "linux-image-6.1.0-56-amd64"),
        fi("usr/bin/same", "same"),
    ]  # fmt: skip
    # The kernel package's name carries the ABI version too: it is normalised alike.
    pairs = pair_files(old, new)
    got = {p.new.path: (p.old.path, p.how) for p in pairs}
    assert got[b"usr/lib/modules/6.1.0-56-amd64/kernel/fs/ext4/ext4.ko"] == (
        b"usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko",
        "renamed",
    )
    assert got[b"boot/vmlinuz-6.1.0-56-amd64"][0] == b"boot/vmlinuz-6.1.0-50-amd64"
    assert b"usr/bin/same" not in got  # the host has that content already
    assert len(pairs) == 3


def test_pairing_versioned_shared_objects_and_same_path() -> None:
    old = [
        fi("usr/lib/x86_64-linux-gnu/libssl.so.3", "ssl-old", "libssl3"),
        fi("usr/lib/x86_64-linux-gnu/libcrypto.so.3", "crypto-old", "libssl3"),
        fi("usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "z-old", "zlib1g"),
    ]
    new = [
        fi("usr/lib/x86_64-linux-gnu/libssl.so.3", "ssl-new", "libssl3"),
        fi("usr/lib/x86_64-linux-gnu/libcrypto.so.3", "crypto-new", "libssl3"),
        fi("usr/lib/x86_64-linux-gnu/libz.so.1.3", "z-new", "zlib1g"),
    ]
    got = {p.new.path: (p.old.path, p.how) for p in pair_files(old, new)}
    assert got[b"usr/lib/x86_64-linux-gnu/libssl.so.3"] == (
        b"usr/lib/x86_64-linux-gnu/libssl.so.3",
        "path",
    )
    assert got[b"usr/lib/x86_64-linux-gnu/libz.so.1.3"] == (
        b"usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "renamed",
    )


def test_pairing_numpy_libs_hashed_names() -> None:
    site = "usr/lib/python3/dist-packages/"
    old = [
        fi(site + "numpy.libs/libscipy_openblas64_-fdde5778.so", "blas-old", "numpy", 25_000_000),
        fi(
            site + "numpy.libs/libgfortran-040039e1-0352e75f.so.5.0.0", "gf-old", "numpy", 2_800_000
        ),
    ]
    new = [
        fi(site + "numpy.libs/libscipy_openblas64_-32a4b2a6.so", "blas-new", "numpy", 25_100_000),
        fi(
            site + "numpy.libs/libgfortran-040039e1-99999999.so.5.0.0", "gf-new", "numpy", 2_800_100
        ),
    ]
    got = {p.new.path: p.old.path for p in pair_files(old, new)}
    assert got[new[0].path] == old[0].path
    assert got[new[1].path] == old[1].path


def test_pairing_prefers_same_package_then_name_then_size() -> None:
    old = [
        fi("a/libx-1.0.so", "x1", "pkg-a", 1000),
        fi("a/libx-1.1.so", "x2", "pkg-b", 1000),
    ]
    new = [fi("a/libx-2.0.so", "x3", "pkg-b", 1000)]
    (pair,) = pair_files(old, new)
    assert pair.old.package == "pkg-b"
    # Different known packages never pair.
    assert pair_files([fi("a/libq-1.so", "q", "one")], [fi("a/libq-2.so", "r", "two")]) == []


def test_pairing_similar_name_and_size() -> None:
    old = [
        fi("opt/app/data-build17.bin", "o", None, 10_000),
        fi("opt/other/thing.bin", "t", None, 10_000),
    ]
    new = [fi("opt/app2/data-build18.bin", "n", None, 11_000)]
    (pair,) = pair_files(old, new)
    assert pair.how == "similar" and pair.old.path == b"opt/app/data-build17.bin"
    # Too different in size: no pair.
    assert pair_files(old[:1], [fi("opt/app2/data-build18.bin", "n", None, 40_000)]) == []
    assert similarity_key(b"x/libfoo-1a2b3c4d.so.5") == similarity_key(b"y/libfoo-99999999.so.6")


# --- encodings -----------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, edits: int) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        kind = rng.randrange(3)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 0xFF
        elif kind == 1:
            out[at:at] = rng.randbytes(rng.randrange(1, 64))
        else:
            del out[at : at + rng.randrange(1, 64)]
    return bytes(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 40_000),
    edits=st.integers(0, 20),
    encoding=st.sampled_from([ZSTD_PATCH, BSDIFF_ZSTD, BSDIFF_XZ]),
)
def test_encode_apply_round_trip(seed: int, size: int, edits: int, encoding: int) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(size)
    new = mutate(rng, old, edits)
    delta = encode(encoding, old, new, level=3)
    assert apply_delta(encoding, old, delta, len(new)) == new


def test_encode_best_is_small_and_never_worse_than_patch_from() -> None:
    rng = random.Random(7)
    old = rng.randbytes(300_000)
    new = mutate(rng, old, 10)
    encoding, delta = encode_best(old, new, level=19)
    assert len(delta) <= len(encode(ZSTD_PATCH, old, new, level=19))
    assert len(delta) <= len(encode(BSDIFF_XZ, old, new, level=19))
    assert len(delta) < 5_000
    assert apply_delta(encoding, old, delta, len(new)) == new
    # Unrelated content: the probe is the answer (and no smaller than the file).
    other = rng.randbytes(50_000)
    encoding, delta = encode_best(rng.randbytes(50_000), other)
    assert encoding == ZSTD_PATCH
    assert len(delta) >= len(other)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    encoding=st.sampled_from([ZSTD_PATCH, BSDIFF_ZSTD, BSDIFF_XZ]),
    flips=st.integers(1, 8),
)
def test_corrupt_deltas_fail_cleanly(seed: int, encoding: int, flips: int) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(5000)
    new = mutate(rng, old, 5)
    delta = bytearray(encode(encoding, old, new, level=3))
    for _ in range(flips):
        delta[rng.randrange(len(delta))] ^= 1 << rng.randrange(8)
    try:
        out = apply_delta(encoding, old, bytes(delta), len(new))
    except DeltaError:
        return
    assert len(out) == len(new)  # decoded to the promised size; the sha256 check catches the rest


def test_apply_caps_output_and_rejects_junk() -> None:
    old = b"a" * 1000
    new = b"a" * 900 + b"b" * 2000
    delta = encode(ZSTD_PATCH, old, new)
    with pytest.raises(DeltaError):
        apply_delta(ZSTD_PATCH, old, delta, 100)  # more than promised
    with pytest.raises(DeltaError):
        apply_delta(BSDIFF_ZSTD, old, b"not zstd", 10)
    with pytest.raises(DeltaError):
        apply_delta(BSDIFF_XZ, old, b"\x01junk", 10)
    with pytest.raises(DeltaError):  # a valid stream, but more than the file allows
        apply_delta(BSDIFF_XZ, old, encode(BSDIFF_XZ, old, new), 10)
    with pytest.raises(DeltaError):
        apply_delta(99, old, delta, len(new))


def gnu_gzip(data: bytes, level: int) -> bytes:
    return subprocess.run(
        ["gzip", "-n", f"-{level}", "-c"], input=data, capture_output=True, check=True
    ).stdout


def text(rng: random.Random, lines: int) -> bytes:
    words = [b"kernel", b"module", b"security", b"fix", b"openssl", b"CVE-2026", b"update"]
    return b"\n".join(b" ".join(rng.choice(words) for _ in range(8)) for _ in range(lines))


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gzip_inner_deltas_the_content_and_regzips_exactly(level: int) -> None:
    rng = random.Random(level)
    old_raw = text(rng, 20_000)
    new_raw = old_raw[:50_000] + b"a changed line\n" + old_raw[50_000:]
    old, new = gnu_gzip(old_raw, level), gnu_gzip(new_raw, level)
    encoding, delta = encode_best(old, new, level=19)
    assert encoding == GZIP_INNER
    # The compressed bytes differ from the change on: a delta of them saves little.
    assert len(delta) * 20 < len(encode(ZSTD_PATCH, old, new, level=19))
    assert apply_delta(encoding, old, delta, len(new)) == new


def test_gzip_inner_is_not_offered_for_streams_gzip_does_not_reproduce() -> None:
    rng = random.Random(3)
    old_raw = text(rng, 5_000)
    new_raw = old_raw + b"one more line\n"
    # Level 4 leaves the header as level 6 would (XFL 0): gzip -n -6 does not remake it.
    old, new = gzip.compress(old_raw, 4, mtime=0), gzip.compress(new_raw, 4, mtime=0)
    assert gnu_gzip(new_raw, 6) != new
    encoding, delta = encode_best(old, new, level=9)
    assert encoding != GZIP_INNER
    assert apply_delta(encoding, old, delta, len(new)) == new
    with pytest.raises(GzipError):
        encode(GZIP_INNER, old, new)


def test_gzip_inner_rejects_lies_and_a_missing_gzip(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    old_raw = text(rng, 5_000)
    old, new = gnu_gzip(old_raw, 9), gnu_gzip(old_raw + b"tail\n", 9)
    delta = encode(GZIP_INNER, old, new)
    assert apply_delta(GZIP_INNER, old, delta, len(new)) == new
    header = struct.Struct("<4sBBHQQ")
    magic, lvl, inner, _r, old_size, new_size = header.unpack_from(delta)
    body = delta[header.size :]
    lies = [
        header.pack(b"XXXX", lvl, inner, 0, old_size, new_size) + body,
        header.pack(magic, 0, inner, 0, old_size, new_size) + body,
        header.pack(magic, lvl, 9, 0, old_size, new_size) + body,
        header.pack(magic, lvl, inner, 0, old_size - 1, new_size) + body,
        header.pack(magic, lvl, inner, 0, old_size, 1 << 40) + body,  # a bomb
        header.pack(magic, lvl, inner, 0, old_size, new_size - 1) + body,
        delta[:10],
    ]
    for lie in lies:
        with pytest.raises(DeltaError):
            apply_delta(GZIP_INNER, old, lie, len(new))
    with pytest.raises(DeltaError):  # not a gzip base
        apply_delta(GZIP_INNER, old_raw, delta, len(new))
    with pytest.raises(DeltaError):  # recompressed at another level: not the promised size
        apply_delta(
            GZIP_INNER, old, header.pack(magic, 1, inner, 0, old_size, new_size) + body, len(new)
        )
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeltaError, match="no gzip program"):
        apply_delta(GZIP_INNER, old, delta, len(new))


def test_big_patch_from_goes_through_the_zstd_program_and_python_decodes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chunkah.delta import encode as encode_mod

    assert shutil.which("zstd"), "the Makefile installs Debian's zstd"
    made: list[int] = []
    real = encode_mod._zstd_patch_cli

    def spy(cli: str, old: bytes, parts: list[bytes], level: int) -> list[bytes] | None:
        out = real(cli, old, parts, level)
        made.append(-1 if out is None else len(out[0]))
        return out

    monkeypatch.setattr(encode_mod, "_zstd_patch_cli", spy)
    rng = random.Random(5)
    old = rng.randbytes(9 << 20)
    new = mutate(rng, old, 30)
    delta = encode(ZSTD_PATCH, old, new, level=3)  # 18 MiB together: the zstd CLI
    assert made == [len(delta)]  # the program made it (no in-process fallback)
    assert len(delta) < 100_000
    assert apply_delta(ZSTD_PATCH, old, delta, len(new)) == new
    # Small pairs stay in-process.
    encode(ZSTD_PATCH, old[:4096], new[:4096], level=3)
    assert len(made) == 1


def test_patch_from_falls_back_in_process_when_the_zstd_program_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from chunkah.delta import encode as encode_mod

    broken = tmp_path / "zstd"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(encode_mod.shutil, "which", lambda name: str(broken))
    rng = random.Random(6)
    old = rng.randbytes(9 << 20)
    new = mutate(rng, old, 30)
    delta = encode(ZSTD_PATCH, old, new, level=3)
    assert apply_delta(ZSTD_PATCH, old, delta, len(new)) == new


# --- the index -----------------------------------------------------------------------


def offer(path: bytes, offset: int, size: int, to: bytes = b"t", frm: bytes = b"f") -> DeltaOffer:
    return DeltaOffer(path, ZSTD_PATCH, offset, size, sha(frm), 10, sha(to), 20, sha(path))


def test_index_round_trip() -> None:
    offers = [offer(b"usr/bin/a", 0, 10, b"a"), offer(b"usr/bin/\xff", 10, 5, b"b")]
    blob = encode_index(offers, 15)
    assert decode_index(blob) == (offers, 15)
    assert set(offers_by_target(offers)) == {sha(b"a"), sha(b"b")}


@pytest.mark.parametrize(
    "offers,data_size",
    [
        ([offer(b"a", 0, 10)], 5),  # past the data
        ([offer(b"a", 0, 10), offer(b"b", 5, 10)], 20),  # overlapping
        ([offer(b"a", 0, 0)], 5),  # empty delta
    ],
)
def test_index_rejects_lies(offers: list[DeltaOffer], data_size: int) -> None:
    with pytest.raises(DeltaIndexError):
        decode_index(encode_index(offers, data_size))


def test_index_rejects_junk() -> None:
    import zstandard

    for blob in (b"", b"junk", zstandard.compress(b"CHKDLT\x00\x02" + bytes(56))):
        with pytest.raises(DeltaIndexError):
            decode_index(blob)


# --- the planner with deltas ---------------------------------------------------------


def file_entry(path: bytes, content: bytes, frame: int) -> IndexEntry:
    return IndexEntry(
        path, "file", 0o644, 0, 0, 1, len(content), sha256=sha(content),
        chunks=(ChunkRef(sha(content), len(content), frame, 0),),
    )  # fmt: skip


def root() -> IndexEntry:
    return IndexEntry(b"", "dir", 0o755, 0, 0, 1, 0)


def test_plan_takes_a_delta_when_it_is_smaller() -> None:
    old_a, new_a, new_b = b"A" * 1000, b"A" * 999 + b"B", b"C" * 800
    current = LayerIndex("sha256:" + "0" * 64, "x", 100, "m", "chunkah",
                         [root(), file_entry(b"a-1.0.so", old_a, 0)], [FrameRef(0, 100, 1000)])  # fmt: skip
    target = LayerIndex("sha256:" + "1" * 64, "y", 500, "m", "chunkah",
                        [root(), file_entry(b"a-1.1.so", new_a, 0), file_entry(b"b", new_b, 1)],
                        [FrameRef(0, 300, 1000), FrameRef(300, 200, 800)])  # fmt: skip
    inventory = inventory_from_indexes([current])
    small = DeltaOffer(
        b"a-1.1.so", ZSTD_PATCH, 0, 40, sha(old_a), 1000, sha(new_a), 1000, b"d" * 32
    )
    big = DeltaOffer(b"b", ZSTD_PATCH, 40, 500, sha(old_a), 1000, sha(new_b), 800, b"e" * 32)
    plan = plan_update([target], inventory, deltas=offers_by_target([small, big]))
    by_path = {f.entry.path: f for f in plan.files}
    assert by_path[b"a-1.1.so"].action == "delta" and by_path[b"a-1.1.so"].local == b"a-1.0.so"
    assert by_path[b"b"].action == "build"  # its delta is bigger than its 200-byte frame
    assert [(r.offset, r.length) for r in plan.deltas] == [(0, 40)]
    assert [r.frames for r in plan.fetch] == [(1,)]
    summary = plan.summary([target])
    assert summary["files"]["delta"] == 1 and summary["delta_bytes"] == 40
    assert summary["delta_files"][0]["base"] == "a-1.0.so"
    # An offer whose base the host lacks is ignored.
    orphan = small._replace(from_sha256=sha(b"nothing"))
    plan = plan_update([target], inventory, deltas=offers_by_target([orphan]))
    assert not plan.deltas and all(f.action == "build" for f in plan.files)
    # A file whose whole content is already in the cache comes from there.
    plan = plan_update([target], inventory_from_indexes([current], cached={sha(new_b)}))
    by_path = {f.entry.path: f for f in plan.files}
    assert [c.source for c in by_path[b"b"].chunks] == ["cache"]
