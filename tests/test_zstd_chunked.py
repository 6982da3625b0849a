"""The zstd:chunked reader on hand-made blobs: conversion, chunk reads, tar-split, lies.

``make_zstd_chunked`` below writes blobs the way containers/storage does (a frame
per tar-header run and per chunk, holes as ``zeros`` chunks, manifest + tar-split +
footer in skippable frames, annotations), so every field and every lie can be
tested without a tool.  Blobs made by the real skopeo: test_zstd_chunked_skopeo.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkah.format.toc import TocError
from chunkah.format.zstd_chunked import (
    MANIFEST_CHECKSUM_KEYS,
    MANIFEST_POSITION_KEYS,
    TARSPLIT_POSITION_KEYS,
    ZstdChunkedError,
    decode_manifest,
    is_zstd_chunked,
    normalize_name,
    parse_annotations,
    read_chunk,
    read_tar_split,
    read_zstd_chunked_toc,
    regenerate_tar,
)

SKIPPABLE = 0x184D2A50
NEW_MAGIC = b"GNUlInUx"
OLD_MAGIC = b"GnUlInUx"
MTIME = 1_700_000_000


# --- a writer in the manner of containers/storage -------------------------------


@dataclass
class Blob:
    data: bytes
    annotations: dict[str, str]
    tar: bytes
    manifest: dict[str, Any]
    tar_split: bytes = b""

    def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()


def _frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def _skippable(data: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE, len(data)) + data


def _chunks(payload: bytes, chunk_size: int, holes: bool) -> list[tuple[bytes, bool]]:
    """Fixed-size chunks; with ``holes``, runs of >= 1 KiB zeros are chunks of their own."""
    out: list[tuple[bytes, bool]] = []
    pos = 0
    while pos < len(payload):
        if holes and payload[pos : pos + 1024] == bytes(1024)[: len(payload[pos : pos + 1024])]:
            end = pos
            while end < len(payload) and payload[end] == 0:
                end += 1
            if end - pos >= 1024:
                out.append((payload[pos:end], True))
                pos = end
                continue
        end = min(pos + chunk_size, len(payload))
        if holes:
            z = payload.find(bytes(1024), pos, end + 1023)
            if pos < z < end:
                end = z
        out.append((payload[pos:end], False))
        pos = end
    return out


def tar_split_records(tar: bytes) -> list[dict[str, Any]]:
    """tar-split JSON records for ``tar``: raw segments around each member's payload."""
    records: list[dict[str, Any]] = []
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf.getmembers():
            records.append({"type": 2, "payload": base64.b64encode(tar[pos : m.offset_data])})
            size = m.size if m.isreg() else 0
            rec: dict[str, Any] = {"type": 1, "name": m.name, "payload": None}
            if size:
                rec["size"] = size
            records.append(rec)
            pos = m.offset_data + size
    records.append({"type": 2, "payload": base64.b64encode(tar[pos:])})
    for i, r in enumerate(records):
        r["position"] = i
        if isinstance(r["payload"], bytes):
            r["payload"] = r["payload"].decode()
    return records


def encode_tar_split(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def make_zstd_chunked(
    tar: bytes,
    *,
    chunk_size: int = 4096,
    holes: bool = True,
    new_format: bool = True,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    mutate_tar_split: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Blob:
    """A zstd:chunked blob of ``tar`` (``new_format``: io.github.* keys, tar-split)."""
    out = bytearray()
    entries: list[dict[str, Any]] = []
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    pending = b""
    for m in members:
        pending += tar[pos : m.offset_data]
        pos = m.offset_data
        kind = {
            tarfile.REGTYPE: "reg",
            tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink",
            tarfile.LNKTYPE: "hardlink",
            tarfile.CHRTYPE: "char",
            tarfile.BLKTYPE: "block",
            tarfile.FIFOTYPE: "fifo",
        }[m.type]
        e: dict[str, Any] = {
            "type": kind,
            "name": m.name + ("/" if m.isdir() else ""),
            "mode": m.mode,
            "modtime": "2023-11-14T22:13:20Z",
        }
        for key, value in (
            ("uid", m.uid),
            ("gid", m.gid),
            ("linkName", m.linkname),
            ("devMajor", m.devmajor),
            ("devMinor", m.devminor),
        ):
            if value:
                e[key] = value
        xattrs = {
            k[len("SCHILY.xattr.") :]: base64.b64encode(
                v.encode("utf-8", "surrogateescape")
            ).decode()
            for k, v in m.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        if xattrs:
            e["xattrs"] = xattrs
        chunk_entries: list[dict[str, Any]] = []
        if m.isreg() and m.size:
            payload = tar[pos : pos + m.size]
            pos += m.size
            e["size"] = m.size
            e["digest"] = "sha256:" + hashlib.sha256(payload).hexdigest()
            out += _frame(pending)
            pending = b""
            chunks = _chunks(payload, chunk_size, holes)
            e["offset"] = len(out)
            coff = 0
            for k, (data, zero) in enumerate(chunks):
                c = e if k == 0 else {"type": "chunk", "name": e["name"]}
                if len(chunks) > 1:
                    c["offset"] = len(out)
                    c["chunkSize"] = len(data)
                    if coff:
                        c["chunkOffset"] = coff
                    c["chunkDigest"] = "sha256:" + hashlib.sha256(data).hexdigest()
                    if zero:
                        c["chunkType"] = "zeros"
                if k:
                    chunk_entries.append(c)
                out += _frame(data)
                coff += len(data)
            e["endOffset"] = len(out)
        entries += [e, *chunk_entries]
    pending += tar[pos:]
    out += _frame(pending)

    records = tar_split_records(tar)
    if mutate_tar_split is not None:
        mutate_tar_split(records)
    ts_raw = encode_tar_split(records)
    ts = zstandard.ZstdCompressor(level=3).compress(ts_raw)
    manifest: dict[str, Any] = {"version": 1, "entries": entries}
    if new_format:
        manifest["tarSplitDigest"] = "sha256:" + hashlib.sha256(ts).hexdigest()
    if mutate is not None:
        mutate(manifest)
    raw = json.dumps(manifest).encode()
    compressed = zstandard.ZstdCompressor(level=3).compress(raw)
    m_off = len(out) + 8
    out += _skippable(compressed)
    if new_format:
        keys = (MANIFEST_CHECKSUM_KEYS[0], MANIFEST_POSITION_KEYS[0])
        ts_off = len(out) + 8
        out += _skippable(ts)
        footer = (
            struct.pack("<7Q", m_off, len(compressed), len(raw), 1, ts_off, len(ts), len(ts_raw))
            + NEW_MAGIC
        )
    else:
        keys = (MANIFEST_CHECKSUM_KEYS[1], MANIFEST_POSITION_KEYS[1])
        footer = struct.pack("<4Q", m_off, len(compressed), len(raw), 1) + OLD_MAGIC
    out += _skippable(footer)
    annotations = {
        keys[0]: "sha256:" + hashlib.sha256(compressed).hexdigest(),
        keys[1]: f"{m_off}:{len(compressed)}:{len(raw)}:1",
    }
    if new_format:
        annotations[TARSPLIT_POSITION_KEYS[0]] = f"{ts_off}:{len(ts)}:{len(ts_raw)}"
    return Blob(bytes(out), annotations, tar, manifest, ts)


# --- a tar with every kind of entry ------------------------------------------------


@dataclass
class Member:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)


def make_tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = m.kind
            ti.mode = m.mode
            ti.mtime = MTIME
            ti.uid, ti.gid = m.uid, m.gid
            ti.linkname = m.link
            ti.devmajor, ti.devminor = m.dev
            ti.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                for k, v in m.xattrs.items()
            }
            if m.kind == tarfile.REGTYPE:
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


RNG = np.random.default_rng(7)
BIG = RNG.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
HOLEY = b"head" * 500 + bytes(5000) + b"tail" * 600
MEMBERS = [
    Member("./", tarfile.DIRTYPE, mode=0o755),
    Member("etc", tarfile.DIRTYPE, mode=0o755),
    Member("etc/hostname", data=b"box\n"),
    Member("usr", tarfile.DIRTYPE, mode=0o755),
    Member("usr/bin", tarfile.DIRTYPE, mode=0o755),
    Member("usr/bin/big", data=BIG, mode=0o4755, uid=1234, gid=5678),
    Member("usr/bin/holey", data=HOLEY),
    Member("usr/bin/empty", data=b""),
    Member("usr/bin/sh", tarfile.SYMTYPE, link="../../bin/dash", mode=0o777),
    # The link sorts before its target: the reader roots the set at "usr/bin/a-link".
    Member("usr/bin/a-link", tarfile.LNKTYPE, link="usr/bin/big", mode=0o4755),
    Member("usr/bin/cap", data=b"cap", xattrs={"security.capability": b"\x01\x00\x00\x02"}),
    Member("dev", tarfile.DIRTYPE, mode=0o755),
    Member("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
    Member("dev/loop0", tarfile.BLKTYPE, mode=0o660, dev=(7, 0)),
    Member("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
]


@pytest.fixture(scope="module")
def blob() -> Blob:
    return make_zstd_chunked(make_tar(MEMBERS))


def test_blob_decompresses_to_the_tar(blob: Blob) -> None:
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob.data), read_across_frames=True)
    assert out.read() == blob.tar


def test_conversion_keeps_every_field(blob: Blob) -> None:
    layer = read_zstd_chunked_toc(
        blob.annotations, blob.read_range, blob_size=len(blob.data), diff_id=blob.diff_id
    )
    toc = layer.toc
    assert toc.diff_id_digest == blob.diff_id
    assert not layer.tar_offsets_known and layer.lossy_paths == ()
    by_path = {e.path: e for e in toc}
    assert list(by_path) == sorted(by_path, key=lambda p: p.split(b"/"))
    assert by_path[b""].type == "dir"
    big = by_path[b"usr/bin/a-link"]
    assert (big.type, big.size, big.mode, big.uid, big.gid) == ("file", len(BIG), 0o4755, 0, 0)
    assert big.sha256 == hashlib.sha256(BIG).digest()
    assert big.n_chunks == 5
    other = by_path[b"usr/bin/big"]
    assert (other.type, other.link, other.size) == ("hardlink", b"usr/bin/a-link", len(BIG))
    assert (other.uid, other.gid) == (1234, 5678)
    assert by_path[b"usr/bin/sh"].link == b"../../bin/dash"
    assert by_path[b"dev/null"].rdev == (1, 3) and by_path[b"dev/null"].type == "char"
    assert by_path[b"dev/loop0"].type == "block" and by_path[b"dev/fifo"].type == "fifo"
    assert by_path[b"usr/bin/cap"].xattrs == (("security.capability", b"\x01\x00\x00\x02"),)
    assert by_path[b"usr/bin/empty"].n_chunks == 0
    assert all(e.mtime == MTIME for e in toc)
    # Payload space: every chunk once, in blob order.
    assert toc.tar_size == sum(len(m.data) for m in MEMBERS)
    assert (toc.chunks["xxh3"] == 0).all()


def test_every_chunk_reads_from_its_range_alone(blob: Blob) -> None:
    layer = read_zstd_chunked_toc(blob.annotations, blob.read_range)
    toc = layer.toc
    holey = next(e for e in toc if e.path == b"usr/bin/holey")
    zero_chunks = [int(c) for c in np.flatnonzero(layer.zero_chunks)]
    assert zero_chunks and all(
        holey.first_chunk <= c < holey.first_chunk + holey.n_chunks for c in zero_chunks
    )
    for e in toc:
        if e.type != "file":
            continue
        got = b"".join(
            read_chunk(layer, c, blob.read_range)
            for c in range(e.first_chunk, e.first_chunk + e.n_chunks)
        )
        assert hashlib.sha256(got).digest() == e.sha256
        assert len(got) == e.size
    # A zeros chunk's frame really holds zeros (a client may still fetch it).
    c = zero_chunks[0]
    coff, csize = layer.chunk_range(c)
    assert zstandard.ZstdDecompressor().decompress(
        blob.data[coff : coff + csize], max_output_size=1 << 20
    ) == bytes(int(toc.chunks[c]["usize"]))


def test_old_format_without_tar_split() -> None:
    b = make_zstd_chunked(make_tar(MEMBERS), new_format=False)
    assert set(b.annotations) == {MANIFEST_CHECKSUM_KEYS[1], MANIFEST_POSITION_KEYS[1]}
    assert is_zstd_chunked(b.annotations)
    layer = read_zstd_chunked_toc(b.annotations, b.read_range)
    assert layer.location.tar_split is None and layer.tar_split_digest is None
    assert read_tar_split(layer, b.read_range) is None
    assert len(layer.toc) == len(MEMBERS)


def _file_content(layer: Any, read_range: Callable[[int, int], bytes]) -> Any:
    toc = layer.toc
    index = {toc.path(i): i for i in range(len(toc))}

    def content(path: bytes) -> Any:
        e = toc.entry(index[path])
        if e.type == "hardlink":
            e = toc.entry(index[e.link])
        for c in range(e.first_chunk, e.first_chunk + e.n_chunks):
            yield read_chunk(layer, c, read_range)

    return content


def test_tar_split_regenerates_the_exact_tar(blob: Blob) -> None:
    layer = read_zstd_chunked_toc(blob.annotations, blob.read_range, diff_id=blob.diff_id)
    records = read_tar_split(layer, blob.read_range)
    assert records is not None
    records = list(records)
    assert [r.position for r in records] == list(range(len(records)))
    out = bytearray()
    digest, size = regenerate_tar(
        records,
        _file_content(layer, blob.read_range),
        sink=out.extend,
        expected_diff_id=blob.diff_id,
    )
    assert (digest, size) == (blob.diff_id, len(blob.tar)) and bytes(out) == blob.tar
    # A file that comes back short, or a wrong diff_id, is an error.
    with pytest.raises(ZstdChunkedError, match="expected"):
        regenerate_tar(records, lambda p: [b"x"])
    with pytest.raises(ZstdChunkedError, match="diff_id"):
        regenerate_tar(
            records, _file_content(layer, blob.read_range), expected_diff_id="sha256:" + "0" * 64
        )


def test_tar_split_lies_are_rejected() -> None:
    tar = make_tar(MEMBERS)

    def swap(records: list[dict[str, Any]]) -> None:
        records[0]["position"], records[1]["position"] = 1, 0

    b = make_zstd_chunked(tar, mutate_tar_split=swap)
    layer = read_zstd_chunked_toc(b.annotations, b.read_range)
    with pytest.raises(ZstdChunkedError, match="consecutive"):
        list(read_tar_split(layer, b.read_range) or ())
    # The tar-split bytes must match the manifest's tarSplitDigest.
    good = make_zstd_chunked(tar)
    layer = read_zstd_chunked_toc(good.annotations, good.read_range)
    span = layer.location.tar_split
    assert span is not None
    flipped = bytearray(good.data)
    flipped[span.offset + 5] ^= 1
    with pytest.raises(ZstdChunkedError, match="tar-split digest"):
        read_tar_split(layer, lambda o, n: bytes(flipped[o : o + n]))
    with pytest.raises(ZstdChunkedError, match="limit"):
        read_tar_split(layer, good.read_range, max_size=10)


# --- lies and hostile input ---------------------------------------------------------


def _entry(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def find(doc: dict[str, Any]) -> dict[str, Any]:
        return next(e for e in doc["entries"] if e["name"] == name and e["type"] != "chunk")

    return find


BIG_E = _entry("usr/bin/big")
HOST = _entry("etc/hostname")


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], **kw: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        getter(doc).update(kw)

    return mutate


def _chunk_entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["entries"] if e["type"] == "chunk" and e["name"] == "usr/bin/big"]


def _append(entry: dict[str, Any]) -> Any:
    return lambda doc: doc["entries"].append(entry)


LIES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "dotdot": (_set(HOST, name="etc/../../x"), "component"),
    "absolute": (_set(HOST, name="/etc/hostname"), "absolute"),
    "nul": (_set(HOST, name="etc/host\0name"), "NUL"),
    "dot-component": (_set(HOST, name="etc/./hostname"), "component"),
    "empty-name": (_set(HOST, name=""), "empty name"),
    "duplicate": (_append({"type": "dir", "name": "./etc/"}), "duplicate"),
    "mode-string": (_set(HOST, mode="0644"), "not an integer"),
    "size-bool": (_set(HOST, size=True), "not an integer"),
    "uid-negative": (_set(HOST, uid=-1), "out of range"),
    "uid-huge": (_set(HOST, uid=1 << 32), "out of range"),
    "unknown-type": (_set(HOST, type="socket"), "unknown type"),
    "bad-digest": (_set(HOST, digest="sha256:xyz"), "not a sha256"),
    "bad-time": (_set(HOST, modtime="yesterday"), "RFC 3339"),
    "bad-xattr": (_set(HOST, xattrs={"user.x": "***"}), "base64"),
    "wrong-file-digest": (
        _set(HOST, digest="sha256:" + "ab" * 32),
        "does not match its sha256",
    ),
    "orphan-chunk": (
        lambda d: d["entries"].insert(0, {"type": "chunk", "name": "x", "offset": 1}),
        "follows no regular file",
    ),
    "chunk-of-other-file": (
        lambda d: _chunk_entries(d)[0].update(name="etc/hostname"),
        "another file",
    ),
    "chunk-offset-gap": (
        lambda d: _chunk_entries(d)[1].update(chunkOffset=_chunk_entries(d)[1]["chunkOffset"] + 1),
        "chunkOffset",
    ),
    "chunks-short": (
        lambda d: _chunk_entries(d)[-1].update(chunkSize=_chunk_entries(d)[-1]["chunkSize"] - 1),
        "cover",
    ),
    "chunk-backwards": (
        lambda d: _chunk_entries(d)[0].update(offset=HOST(d)["offset"]),
        "bad compressed range",
    ),
    "chunks-shared": (
        lambda d: HOST(d).update(offset=BIG_E(d)["offset"], endOffset=BIG_E(d)["offset"] + 5),
        "overlap",
    ),
    "chunk-past-manifest": (_set(BIG_E, endOffset=10**9), "runs into the manifest"),
    "chunk-no-digest": (lambda d: _chunk_entries(d)[0].pop("chunkDigest"), "chunkDigest"),
    "zeros-liar": (
        lambda d: _chunk_entries(d)[0].update(chunkType="zeros"),
        "zeros chunk",
    ),
    "chunk-type": (lambda d: _chunk_entries(d)[0].update(chunkType="hole"), "chunkType"),
    "empty-file-content": (_set(_entry("usr/bin/empty"), offset=5, endOffset=9), "content"),
    "file-without-digest": (lambda d: HOST(d).pop("digest"), "no digest"),
    "dir-with-size": (_set(_entry("etc/"), size=5), "has a size"),
    "dir-with-offset": (_set(_entry("etc/"), offset=5), "has content"),
    "hardlink-missing": (_set(_entry("usr/bin/a-link"), linkName="nope"), "hardlink"),
    "hardlink-to-dir": (_set(_entry("usr/bin/a-link"), linkName="etc"), "hardlink"),
    "hardlink-escape": (_set(_entry("usr/bin/a-link"), linkName="../x"), "component"),
    "symlink-no-target": (_set(_entry("usr/bin/sh"), linkName=""), "linkName"),
    "version": (lambda d: d.update(version=2), "version"),
    "entries-not-list": (lambda d: d.update(entries={}), "not a list"),
    "entry-not-object": (lambda d: d["entries"].append(3), "not a JSON object"),
    "nan": (_set(HOST, mode=float("nan")), "not JSON"),
    "tar-split-digest": (lambda d: d.update(tarSplitDigest="md5:x"), "tarSplitDigest"),
}


@pytest.mark.parametrize("name", sorted(LIES))
def test_lying_manifests_are_rejected(name: str) -> None:
    mutate, message = LIES[name]
    b = make_zstd_chunked(make_tar(MEMBERS), mutate=mutate)
    with pytest.raises(ZstdChunkedError, match=message):
        layer = read_zstd_chunked_toc(b.annotations, b.read_range, blob_size=len(b.data))
        # A lie about a file digest shows when its chunks are read.
        for c in range(len(layer.toc.chunks)):
            read_chunk(layer, c, b.read_range)
        for e in layer.toc:
            if e.type == "file" and e.size:
                got = b"".join(
                    read_chunk(layer, c, b.read_range)
                    for c in range(e.first_chunk, e.first_chunk + e.n_chunks)
                )
                if hashlib.sha256(got).digest() != e.sha256:
                    raise ZstdChunkedError(f"file digest of {e.path!r}")


def _with_annotation(b: Blob, key_index: int, value: str) -> dict[str, str]:
    ann = dict(b.annotations)
    keys = (MANIFEST_CHECKSUM_KEYS[0], MANIFEST_POSITION_KEYS[0], TARSPLIT_POSITION_KEYS[0])
    ann[keys[key_index]] = value
    return ann


def test_annotation_lies_are_rejected(blob: Blob) -> None:
    off, length, size, _ = map(int, blob.annotations[MANIFEST_POSITION_KEYS[0]].split(":"))
    cases = {
        "digest mismatch": _with_annotation(blob, 0, "sha256:" + "0" * 64),
        "not a sha256": _with_annotation(blob, 0, "sha512:abc"),
        "decimal": _with_annotation(blob, 1, f"{off}:{length}:{size}"),
        "past the end": _with_annotation(blob, 1, f"{off}:{len(blob.data)}:{size}:1"),
        "type 2": _with_annotation(blob, 1, f"{off}:{length}:{size}:2"),
        "impossible": _with_annotation(blob, 1, f"0:{length}:{size}:1"),
        "other than the annotated": _with_annotation(blob, 1, f"{off}:{length}:{size - 1}:1"),
        "limit": _with_annotation(blob, 1, f"{off}:{length}:{1 << 40}:1"),
        "precedes": _with_annotation(blob, 2, f"{off}:{length}:{size}"),
    }
    for message, ann in cases.items():
        with pytest.raises(ZstdChunkedError, match=message):
            read_zstd_chunked_toc(ann, blob.read_range, blob_size=len(blob.data))
    with pytest.raises(ZstdChunkedError, match="not a zstd:chunked layer"):
        parse_annotations({})
    # A short read (a registry that truncates) is caught before hashing.
    with pytest.raises(ZstdChunkedError, match="asked for"):
        read_zstd_chunked_toc(blob.annotations, lambda o, n: blob.data[o : o + n - 1])
    # ZstdChunkedError is a TocError, so callers can treat both formats alike.
    assert issubclass(ZstdChunkedError, TocError)


def test_manifest_bomb_stops_at_the_cap() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(
        b'{"version":1,"entries":[' + b" " * (64 << 20) + b"]}"
    )
    digest = "sha256:" + hashlib.sha256(bomb).hexdigest()
    ann = {MANIFEST_CHECKSUM_KEYS[0]: digest, MANIFEST_POSITION_KEYS[0]: f"8:{len(bomb)}:1000:1"}
    data = bytes(8) + bomb
    with pytest.raises(ZstdChunkedError, match="other than the annotated"):
        read_zstd_chunked_toc(ann, lambda o, n: data[o : o + n])
    with pytest.raises(ZstdChunkedError, match="limit"):
        read_zstd_chunked_toc(ann, lambda o, n: data[o : o + n], max_manifest_size=100)


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (b"./", b""),
        (b".", b""),
        (b"./etc/", b"etc"),
        (b"etc/passwd", b"etc/passwd"),
        (b"././a", b"a"),
    ],
)
def test_normalize_name(name: bytes, want: bytes) -> None:
    assert normalize_name(name, "t") == want


@pytest.mark.parametrize("name", [b"", b"/", b"/a", b"a//b", b"a/../b", b"..", b"a/.", b"a\0"])
def test_normalize_name_rejects(name: bytes) -> None:
    with pytest.raises(ZstdChunkedError):
        normalize_name(name, "t")


def test_lossy_names_are_reported() -> None:
    b = make_zstd_chunked(make_tar([Member("./", tarfile.DIRTYPE), Member("caf\ufffd", data=b"x")]))
    layer = read_zstd_chunked_toc(b.annotations, b.read_range)
    assert layer.lossy_paths == (1,)


def test_times_with_fractions_and_zones() -> None:
    def times(doc: dict[str, Any]) -> None:
        HOST(doc)["modtime"] = "2023-11-14T23:13:20.999999999+01:00"
        _entry("etc/")(doc)["modtime"] = "0001-01-01T00:00:00Z"
        _entry("usr/")(doc).pop("modtime")

    b = make_zstd_chunked(make_tar(MEMBERS), mutate=times)
    toc = read_zstd_chunked_toc(b.annotations, b.read_range).toc
    by_path = {e.path: e for e in toc}
    assert by_path[b"etc/hostname"].mtime == MTIME
    assert by_path[b"etc"].mtime == -62135596800  # Go's zero time
    assert by_path[b"usr"].mtime == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_manifests_give_only_zstd_chunked_errors(data: st.DataObject) -> None:
    base = make_zstd_chunked(make_tar(MEMBERS[:8]), chunk_size=8192)
    raw = bytearray(json.dumps(base.manifest).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.sampled_from(b'{}[]",:0123456789-.aZ/\\ \x00\xff'))
    compressed = zstandard.ZstdCompressor().compress(bytes(raw))
    blob = base.data + _skippable(compressed)
    off = len(base.data) + 8
    ann = {
        MANIFEST_CHECKSUM_KEYS[0]: "sha256:" + hashlib.sha256(compressed).hexdigest(),
        MANIFEST_POSITION_KEYS[0]: f"{off}:{len(compressed)}:{len(raw)}:1",
    }
    try:
        layer = read_zstd_chunked_toc(ann, lambda o, n: blob[o : o + n], blob_size=len(blob))
    except ZstdChunkedError:
        return
    for c in range(len(layer.toc.chunks)):
        with contextlib.suppress(ZstdChunkedError):
            read_chunk(layer, c, lambda o, n: blob[o : o + n])


def test_decode_manifest_is_pure(blob: Blob) -> None:
    loc = parse_annotations(blob.annotations, blob_size=len(blob.data))
    data = blob.read_range(loc.manifest.offset, loc.manifest.length)
    a = decode_manifest(data, loc)
    b = decode_manifest(data, loc)
    assert a.toc.entries.tobytes() == b.toc.entries.tobytes()
    assert a.toc.frames.tobytes() == b.toc.frames.tobytes()
    with pytest.raises(ZstdChunkedError, match="annotation says"):
        decode_manifest(data[:-1], loc)
