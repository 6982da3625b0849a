"""Chunked layer blobs (docs/format.md): readable by any zstd decoder, a TOC that
round-trips, chunks fetchable from their byte range alone, lying TOCs rejected."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import subprocess

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkah.format.toc import (
    TOC_SKIPPABLE_MAGIC,
    CdcSettings,
    TocError,
    decode_toc_frame,
    encode_body,
    encode_toc_frame,
    parse_body,
)
from chunkah.format.writer import ChunkedSettings, write_chunked_layer
from chunkah.tree import EntryType, read_dir, write_tar

SMALL = ChunkedSettings(cdc=CdcSettings(1024, 4096, 16384), inline_limit=2048, pack_target=8192)


def build(tree, settings=SMALL, clamp=1_700_000_000):
    blob = io.BytesIO()
    layer, toc = write_chunked_layer(tree, blob, mtime_clamp=clamp, settings=settings)
    plain = io.BytesIO()
    written = write_tar(tree, plain, mtime_clamp=clamp)
    return layer, toc, blob.getvalue(), plain.getvalue(), written


@pytest.fixture(scope="module")
def tiny(debian_tiny_rootfs):
    return read_dir(debian_tiny_rootfs.path)


def test_any_zstd_decoder_reads_the_canonical_tar(tiny, tmp_path):
    layer, toc, blob, plain, written = build(tiny, ChunkedSettings())
    path = tmp_path / "layer.tar.zst"
    path.write_bytes(blob)
    # The system zstd binary skips the TOC frame and yields exactly the canonical tar.
    out = subprocess.run(
        ["zstd", "-d", "-c", str(path)], capture_output=True, check=True, timeout=120
    ).stdout
    assert out == plain
    assert layer.diff_id == written.digest == "sha256:" + hashlib.sha256(out).hexdigest()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    assert layer.uncompressed_size == len(plain) == toc.tar_size
    # GNU tar lists it like the plain tar.
    listing = subprocess.run(
        ["tar", "-tvf", str(path), "--zstd"], capture_output=True, check=True, timeout=120
    )
    assert listing.stdout.count(b"\n") == len(tiny)


def test_toc_describes_every_entry_and_round_trips(tiny):
    layer, toc, blob, _plain, _ = build(tiny)
    frame = blob[layer.toc_offset :]
    assert struct.unpack_from("<I", frame)[0] == TOC_SKIPPABLE_MAGIC
    assert layer.toc_length == len(frame)
    parsed = decode_toc_frame(
        frame,
        expected_digest=layer.toc_digest,
        body_size=layer.toc_body_size,
        toc_offset=layer.toc_offset,
    )
    assert encode_body(parsed) == encode_body(toc)
    assert parsed.diff_id_digest == layer.diff_id
    entries = list(parsed)
    assert [e.path for e in entries] == tiny.paths()
    first_of = {m: ms[0] for ms in tiny.hardlink_groups().values() for m in ms[1:]}
    for e in entries:
        src = tiny[e.path]
        assert (e.mode, e.uid, e.gid, e.xattrs) == (src.mode, src.uid, src.gid, src.xattrs)
        assert e.mtime == min(src.mtime, 1_700_000_000)
        if e.path in first_of:
            assert e.type == "hardlink" and e.link == first_of[e.path]
        elif src.type is EntryType.FILE:
            assert e.type == "file" and e.size == src.size
            with src.content.open() as f:
                assert e.sha256 == hashlib.sha256(f.read()).digest()
        elif src.type is EntryType.SYMLINK:
            assert e.type == "symlink" and e.link == src.link_target


def test_every_chunk_decompresses_from_its_range_alone(tiny):
    _layer, toc, blob, plain, _ = build(tiny)
    dec = zstandard.ZstdDecompressor()
    frames = toc.frames
    for f in frames:
        raw = dec.decompress(blob[int(f["coff"]) : int(f["coff"]) + int(f["csize"])])
        assert raw == plain[int(f["uoff"]) : int(f["uoff"]) + int(f["usize"])]
    by_file: dict[int, list[bytes]] = {}
    for e in toc:
        if e.type != "file" or not e.size:
            continue
        pieces = []
        for c in range(e.first_chunk, e.first_chunk + e.n_chunks):
            chunk = toc.chunks[c]
            f = frames[int(chunk["frame"])]
            raw = dec.decompress(blob[int(f["coff"]) : int(f["coff"]) + int(f["csize"])])
            start = int(chunk["uoff"]) - int(f["uoff"])
            data = raw[start : start + int(chunk["usize"])]
            assert hashlib.sha256(data).digest() == toc.chunk_sha256(c)
            pieces.append(data)
        by_file[e.index] = pieces
        assert hashlib.sha256(b"".join(pieces)).digest() == e.sha256
    assert len(by_file) > 100
    # Big files really are cut: some have several chunks, each its own frame.
    multi = [e for e in toc if e.n_chunks > 1]
    assert multi
    for e in multi:
        owners = {
            int(toc.chunks[c]["frame"]) for c in range(e.first_chunk, e.first_chunk + e.n_chunks)
        }
        assert len(owners) == e.n_chunks


def test_same_bytes_whatever_the_thread_count(tiny):
    blobs = set()
    for threads in (1, 2):
        st_ = ChunkedSettings(threads=threads, batch_bytes=1 << 20)
        blob = io.BytesIO()
        write_chunked_layer(tiny, blob, mtime_clamp=1_700_000_000, settings=st_)
        blobs.add(hashlib.sha256(blob.getvalue()).hexdigest())
    assert len(blobs) == 1


def test_toc_digest_mismatch_is_rejected(tiny):
    layer, _toc, blob, _plain, _ = build(tiny)
    frame = blob[layer.toc_offset :]
    with pytest.raises(TocError, match="digest mismatch"):
        decode_toc_frame(frame, expected_digest="sha256:" + "0" * 64, body_size=layer.toc_body_size)
    with pytest.raises(TocError, match="annotation says"):
        decode_toc_frame(frame, expected_digest=layer.toc_digest, body_size=layer.toc_body_size - 1)
    with pytest.raises(TocError, match="run past the TOC"):
        decode_toc_frame(
            frame, expected_digest=layer.toc_digest, body_size=layer.toc_body_size, toc_offset=10
        )


def small_toc(tmp_path):
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d/big").write_bytes(
        np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    )
    (root / "d/small").write_bytes(b"hello\n" * 10)
    (root / "d/link").symlink_to("small")
    return build(read_dir(root))


def tamper(toc, table, index, field, value):
    arr = getattr(toc, table).copy()
    arr[index][field] = value
    setattr(toc, table, arr)
    return encode_body(toc)


@pytest.mark.parametrize(
    ("table", "field", "delta", "message"),
    [
        ("frames", "coff", 7, "not contiguous|does not start"),
        ("frames", "usize", 1, "not contiguous|do not end|outside its frame"),
        ("frames", "csize", 0, None),
        ("chunks", "uoff", 1, "outside its frame|does not start|not contiguous"),
        ("chunks", "usize", 5, "outside its frame|do not cover|not contiguous"),
        ("chunks", "frame", 10_000, "does not exist"),
        ("entries", "size", 3, "do not cover|outside the tar|has a size"),
        (
            "entries",
            "n_chunks",
            1,
            "outside the chunk table|do not cover|share|not contiguous|has chunks",
        ),
        ("entries", "path_len", 10_000, "strings"),
        ("entries", "type", 9, "unknown type"),
        ("entries", "payload_uoff", 512, "does not start|outside the tar"),
    ],
)
def test_lying_tocs_are_rejected(tmp_path, table, field, delta, message):
    _layer, toc, _blob, _plain, _ = small_toc(tmp_path)
    victim = {"frames": len(toc.frames) - 1, "chunks": 0, "entries": 2}[table]
    if table == "entries":  # the big file
        victim = next(i for i, e in enumerate(toc) if e.path == b"d/big")
    original = int(getattr(toc, table)[victim][field])
    body = tamper(toc, table, victim, field, original + delta if delta else 0)
    if message is None:
        with pytest.raises(TocError):
            parse_body(body)
    else:
        with pytest.raises(TocError, match=message):
            parse_body(body)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (b"../etc/passwd", "unsafe"),
        (b"/abs", "unsafe"),
        (b"a/./b", "unsafe"),
        (b"a\0b", "unsafe"),
        (b"d", "order"),
    ],
)
def test_bad_paths_are_rejected(tmp_path, path, message):
    _layer, toc, _blob, _plain, _ = small_toc(tmp_path)
    i = next(k for k, e in enumerate(toc) if e.path == b"d/small")
    arr = toc.entries.copy()
    strings = toc.strings + path
    arr[i]["path_off"] = len(toc.strings)
    arr[i]["path_len"] = len(path)
    arr[i]["link_len"] = 0
    toc.entries, toc.strings = arr, strings
    with pytest.raises(TocError, match=message):
        parse_body(encode_body(toc))


def test_hardlink_must_point_back_at_a_file(tmp_path):
    root = tmp_path / "h"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 5000)
    (root / "b").hardlink_to(root / "a")
    _layer, toc, _blob, _plain, _ = build(read_dir(root))
    assert [e.type for e in toc][1:] == ["file", "hardlink"]
    # Point the link at the root directory (the empty path) instead of "a".
    arr = toc.entries.copy()
    arr[2]["link_len"] = 0
    toc.entries = arr
    with pytest.raises(TocError, match="hardlink"):
        parse_body(encode_body(toc))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_tocs_fail_only_with_toc_error(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    layer, _toc, blob, _plain, _ = small_toc(tmp)
    body = bytearray(zstandard.ZstdDecompressor().decompress(blob[layer.toc_offset + 8 :]))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]
    with contextlib.suppress(TocError):
        parse_body(bytes(body))
    frame, size = encode_toc_frame(
        parse_body(bytes(zstandard.ZstdDecompressor().decompress(blob[layer.toc_offset + 8 :])))
    )
    assert size == layer.toc_body_size and frame == blob[layer.toc_offset :]


def test_packed_frames_hold_small_files_and_headers(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    for i in range(200):
        (root / f"f{i:03d}").write_text(f"small file {i}\n" * 20)
    _layer, toc, _blob, _plain, _ = build(read_dir(root))
    # 200 small files share few frames; every file still has its own chunk.
    assert len(toc.frames) < 40
    assert sum(1 for e in toc if e.type == "file") == 200 == len(toc.chunks)
