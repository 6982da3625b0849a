"""Reading zstd:chunked layers (containers/storage, as written by podman and skopeo).

A zstd:chunked blob is an ordinary ``tar+zstd`` layer whose file payloads start new
zstd frames, with every rolling-checksum chunk in a frame of its own, followed by
skippable frames holding a JSON table of contents ("manifest") and, in newer
writers, the tar-split metadata.  The layer descriptor's annotations say where the
manifest is and what its sha256 is.  docs/zstd-chunked.md describes the format as
seen here and how it maps onto our model.

This module turns that manifest into the same :class:`~chunkah.format.toc.Toc` our
own TOC decodes to, so the host planner has one code path:

- one frame per chunk, at the chunk's compressed range in the blob; the frames
  between them (tar headers and padding) are not described by the manifest, so
  frames are in blob order but *not contiguous* there;
- chunk and frame ``uoff`` are offsets in a synthetic *payload space*: all chunk
  bytes back to back in blob order (``Toc.tar_size`` is its length).  zstd:chunked
  records no tar offsets, so the canonical tar cannot be rebuilt from the TOC alone
  (the tar-split frame, when present, can: :func:`regenerate_tar`);
- chunk ``xxh3`` is 0 (zstd:chunked has none; hash locally when needed); chunk
  ``sha256`` is the manifest's chunkDigest (the file digest for single-chunk files,
  the digest of zeros for holes);
- entries in canonical path order; a hardlink set is rooted at its first path in
  that order (it carries the content, the others link to it).

The core (:func:`parse_annotations`, :func:`decode_manifest`,
:func:`decode_tar_split`) is pure; :func:`read_zstd_chunked_toc`,
:func:`read_chunk` and :func:`read_tar_split` take a ``read_range(offset, length)``
callable, so the same code reads a local blob file or a registry blob.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import dataclasses
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zstandard

from chunkah.compression import CompressionError, decompress_frame
from chunkah.format.toc import (
    TYPE_BLOCK,
    TYPE_CHAR,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_FILE,
    TYPE_HARDLINK,
    TYPE_SYMLINK,
    CdcSettings,
    Toc,
    TocBuilder,
    TocError,
    validate,
)

__all__ = [
    "MANIFEST_CHECKSUM_KEYS",
    "MANIFEST_POSITION_KEYS",
    "ROLLSUM_CDC",
    "TARSPLIT_POSITION_KEYS",
    "BlobSpan",
    "ReadRange",
    "TarSplitRecord",
    "ZstdChunkedError",
    "ZstdChunkedLayer",
    "ZstdChunkedLocation",
    "decode_manifest",
    "decode_tar_split",
    "is_zstd_chunked",
    "normalize_name",
    "parse_annotations",
    "read_chunk",
    "read_tar_split",
    "read_zstd_chunked_toc",
    "regenerate_tar",
]

#: Annotation keys, newest spelling first (containers/storage renamed them in 2023;
#: skopeo 1.9 / podman 4.3 write the ``io.containers.`` ones).
MANIFEST_CHECKSUM_KEYS = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)
MANIFEST_POSITION_KEYS = (
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
)
TARSPLIT_POSITION_KEYS = (
    "io.github.containers.zstd-chunked.tarsplit-position",
    "io.containers.zstd-chunked.tarsplit-position",
)
MANIFEST_TYPE_CRFS = 1
SKIPPABLE_HEADER = 8

#: Default caps on what a reader decompresses and holds (a 1.4 GB image has a
#: ~92 MB manifest, RESEARCH.md).  Callers may raise them.
MAX_MANIFEST_SIZE = 256 << 20
MAX_TAR_SPLIT_SIZE = 256 << 20
MAX_TAR_SPLIT_LINE = 16 << 20
#: Frame and chunk sizes are u32 in our tables.
_MAX_U32 = (1 << 32) - 1

#: What ``Toc.cdc`` says for a converted layer: containers/storage's bup rollsum,
#: 16 bits (64 KiB average), no minimum or maximum.  It never equals our FastCDC
#: settings, so a planner never expects chunk-level matches across the two.
ROLLSUM_CDC = CdcSettings(min_size=0, avg_size=1 << 16, max_size=0, normalization=0, seed=0)

ReadRange = Callable[[int, int], bytes]
"""``read_range(offset, length)``: exactly ``length`` bytes of the blob at ``offset``."""


class ZstdChunkedError(TocError):
    """A zstd:chunked layer whose annotations or TOC are malformed or lie."""


@dataclass(frozen=True)
class BlobSpan:
    """A skippable frame's payload in the blob and its decompressed size."""

    offset: int
    length: int
    uncompressed_size: int


@dataclass(frozen=True)
class ZstdChunkedLocation:
    """Where a layer's manifest (and tar-split) are, from its descriptor annotations."""

    manifest: BlobSpan
    manifest_digest: str
    manifest_type: int
    tar_split: BlobSpan | None = None


@dataclass
class ZstdChunkedLayer:
    """A zstd:chunked layer's TOC, converted to our model, plus what only it has.

    ``toc`` validates like our own TOCs except that frames are not contiguous in
    the blob, and ``tar_size``/``uoff`` are in payload space (``tar_offsets_known``
    is False): see the module docstring.  ``toc.diff_id`` is the one passed in
    (from the image config), else 32 zero bytes.
    """

    toc: Toc
    location: ZstdChunkedLocation
    zero_chunks: npt.NDArray[np.bool_]  # per chunk: a hole, all zeros (need not be fetched)
    lossy_paths: tuple[int, ...]  # entries whose names held invalid UTF-8 (now U+FFFD)
    tar_split_digest: str | None
    tar_offsets_known: bool = False

    def chunk_range(self, c: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``c``'s compressed frame in the blob."""
        f = self.toc.frames[int(self.toc.chunks[c]["frame"])]
        return int(f["coff"]), int(f["csize"])


@dataclass(frozen=True)
class TarSplitRecord:
    """One tar-split record: raw tar bytes (``segment``) or a file's payload (``file``)."""

    kind: Literal["file", "segment"]
    position: int
    name: bytes = b""  # as in the tar header (files only)
    size: int = 0  # payload bytes (files only)
    payload: bytes = b""  # the raw bytes (segments) or a crc64 (files)


# --- annotations ------------------------------------------------------------------


def _first(annotations: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if key in annotations:
            return annotations[key]
    return None


def is_zstd_chunked(annotations: Mapping[str, str]) -> bool:
    """True when a layer descriptor carries zstd:chunked manifest annotations."""
    return _first(annotations, MANIFEST_POSITION_KEYS) is not None


_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _span(text: str, fields: int, what: str, blob_size: int | None) -> tuple[int, ...]:
    parts = text.split(":")
    if len(parts) != fields or not all(p.isascii() and p.isdigit() for p in parts):
        raise ZstdChunkedError(f"{what} annotation {text!r} is not {fields} decimal integers")
    values = tuple(int(p) for p in parts)
    offset, length = values[0], values[1]
    if offset < SKIPPABLE_HEADER or length <= 0 or values[2] <= 0:
        raise ZstdChunkedError(f"{what} annotation {text!r} has an empty or impossible span")
    if blob_size is not None and offset + length > blob_size:
        raise ZstdChunkedError(
            f"{what} annotation {text!r} runs past the end of the {blob_size}-byte blob"
        )
    return values


def parse_annotations(
    annotations: Mapping[str, str], *, blob_size: int | None = None
) -> ZstdChunkedLocation:
    """The manifest's (and tar-split's) position and digest from a layer descriptor."""
    position = _first(annotations, MANIFEST_POSITION_KEYS)
    checksum = _first(annotations, MANIFEST_CHECKSUM_KEYS)
    if position is None or checksum is None:
        raise ZstdChunkedError(
            "not a zstd:chunked layer: the descriptor lacks the manifest position and checksum"
        )
    if not _DIGEST_RE.fullmatch(checksum):
        raise ZstdChunkedError(f"manifest checksum {checksum!r} is not a sha256 digest")
    offset, length, size, mtype = _span(position, 4, "manifest position", blob_size)
    if mtype != MANIFEST_TYPE_CRFS:
        raise ZstdChunkedError(f"manifest type {mtype} is not supported (only 1, CRFS JSON)")
    tar_split = None
    ts_text = _first(annotations, TARSPLIT_POSITION_KEYS)
    if ts_text is not None:
        ts_off, ts_len, ts_size = _span(ts_text, 3, "tar-split position", blob_size)
        if ts_off < offset + length + SKIPPABLE_HEADER:
            raise ZstdChunkedError("the tar-split frame overlaps or precedes the manifest")
        tar_split = BlobSpan(ts_off, ts_len, ts_size)
    return ZstdChunkedLocation(BlobSpan(offset, length, size), checksum, mtype, tar_split)


# --- names --------------------------------------------------------------------------


def normalize_name(name: bytes, where: str) -> bytes:
    """A tar member name in our path normal form (docs/tree.md), or an error.

    Leading ``./`` is stripped and one trailing ``/`` (directories); ``./`` alone is
    the root (``b""``).  Absolute names, ``.``/``..``/empty components and NUL are
    rejected.
    """
    if b"\0" in name:
        raise ZstdChunkedError(f"{where}: name {name!r} contains NUL")
    p = name
    while p.startswith(b"./"):
        p = p[2:]
    if p in (b"", b"."):
        if not name:
            raise ZstdChunkedError(f"{where}: empty name")
        return b""
    if p.endswith(b"/"):
        p = p[:-1]
    if p.startswith(b"/"):
        raise ZstdChunkedError(f"{where}: name {name!r} is absolute")
    if any(part in (b"", b".", b"..") for part in p.split(b"/")):
        raise ZstdChunkedError(f"{where}: name {name!r} has an empty, '.' or '..' component")
    return p


# --- the manifest -------------------------------------------------------------------

_TIME_RE = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)"
)
_TYPES = {
    "reg": TYPE_FILE,
    "dir": TYPE_DIR,
    "symlink": TYPE_SYMLINK,
    "char": TYPE_CHAR,
    "block": TYPE_BLOCK,
    "fifo": TYPE_FIFO,
    "hardlink": TYPE_HARDLINK,
}
_ZERO_DIGESTS: dict[int, bytes] = {}
_EMPTY_SHA256 = hashlib.sha256(b"").digest()


def _zeros_sha256(n: int) -> bytes:
    got = _ZERO_DIGESTS.get(n)
    if got is None:
        h = hashlib.sha256()
        block = bytes(min(n, 1 << 20))
        left = n
        while left:
            step = min(left, len(block))
            h.update(block[:step] if step < len(block) else block)
            left -= step
        got = _ZERO_DIGESTS[n] = h.digest()
    return got


@functools.lru_cache(maxsize=4096)  # images repeat a few (clamped) times many times
def _parse_time(v: str) -> int | None:
    """Whole seconds since the epoch of an RFC 3339 time, or None."""
    m = _TIME_RE.fullmatch(v)
    if m is None:
        return None
    year, month, day, hh, mm, ss = (int(m[i]) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61):
        return None
    secs = calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0))
    tz = m[8]
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    if not -(1 << 63) <= secs < 1 << 63:
        return None
    return secs  # fractions are dropped, as a tar header's seconds field does


class _Fields:
    """Typed access to one TOC entry's JSON object; errors name the entry."""

    __slots__ = ("obj", "where")

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise ZstdChunkedError(f"{where} is not a JSON object")
        self.obj: dict[str, Any] = obj
        self.where = where

    def integer(self, key: str, *, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
        v = self.obj.get(key, 0)
        if type(v) is not int:
            raise ZstdChunkedError(f"{self.where}: {key!r} is not an integer")
        if not lo <= v <= hi:
            raise ZstdChunkedError(f"{self.where}: {key!r} = {v} is out of range")
        return v

    def text(self, key: str) -> str:
        v = self.obj.get(key, "")
        if not isinstance(v, str):
            raise ZstdChunkedError(f"{self.where}: {key!r} is not a string")
        return v

    def raw(self, key: str) -> bytes:
        try:
            return self.text(key).encode("utf-8")
        except UnicodeEncodeError:
            raise ZstdChunkedError(f"{self.where}: {key!r} holds a lone surrogate") from None

    def digest(self, key: str) -> bytes | None:
        v = self.obj.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str) or not _DIGEST_RE.fullmatch(v):
            raise ZstdChunkedError(f"{self.where}: {key!r} is not a sha256 digest")
        return bytes.fromhex(v[7:])

    def time(self, key: str) -> int:
        v = self.obj.get(key)
        if v is None:
            return 0
        secs = _parse_time(v) if isinstance(v, str) else None
        if secs is None:
            raise ZstdChunkedError(f"{self.where}: {key!r} = {v!r} is not an RFC 3339 time")
        return secs

    def xattrs(self) -> tuple[tuple[str, bytes], ...]:
        v = self.obj.get("xattrs")
        if v is None:
            return ()
        if not isinstance(v, dict):
            raise ZstdChunkedError(f"{self.where}: 'xattrs' is not an object")
        out = []
        for name, value in v.items():
            if not isinstance(value, str) or not name or "\0" in name:
                raise ZstdChunkedError(f"{self.where}: xattr {name!r} is malformed")
            if len(name.encode("utf-8", "surrogateescape")) > 0xFFFF:
                raise ZstdChunkedError(f"{self.where}: xattr name is too long")
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ZstdChunkedError(f"{self.where}: xattr {name!r} is not base64") from None
            out.append((name, raw))
        return tuple(sorted(out))


@dataclass
class _Item:
    """One non-chunk TOC entry while converting."""

    index: int
    path: bytes
    type_code: int
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: bytes
    xattrs: tuple[tuple[str, bytes], ...]
    rdev: tuple[int, int]
    sha256: bytes | None
    chunks: list[tuple[int, int, int, bytes, bool]]  # (coff, cend, usize, sha256, zeros)


def _reject_constant(name: str) -> Any:
    raise ZstdChunkedError(f"manifest JSON holds {name}, which is not JSON")


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except ZstdChunkedError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting
        raise ZstdChunkedError(f"{what} is not valid JSON: {exc}") from None


def _chunks_of(
    reg: _Fields, chunk_objs: list[_Fields], size: int, digest: bytes | None
) -> list[tuple[int, int, int, bytes, bool]]:
    """A regular file's chunks: (compressed start, compressed end, size, sha256, zeros)."""
    where = reg.where
    if size == 0:
        if chunk_objs or reg.integer("offset") or reg.integer("endOffset") or digest is not None:
            raise ZstdChunkedError(f"{where}: an empty file has content")
        return []
    if digest is None:
        raise ZstdChunkedError(f"{where}: a non-empty file has no digest")
    start, end = reg.integer("offset"), reg.integer("endOffset")
    if start <= 0 or end <= start:
        raise ZstdChunkedError(f"{where}: bad compressed range {start}..{end}")
    if not chunk_objs and reg.integer("chunkSize") in (0, size):
        # One chunk: containers/storage leaves the chunk fields out.
        zeros = reg.text("chunkType") == "zeros"
        sha = reg.digest("chunkDigest") or digest
        if sha != digest or (zeros and sha != _zeros_sha256(size)):
            raise ZstdChunkedError(f"{where}: the only chunk's digest is not the file's")
        return [(start, end, size, sha, zeros)]
    out: list[tuple[int, int, int, bytes, bool]] = []
    pos = 0
    objs = [reg, *chunk_objs]
    for k, f in enumerate(objs):
        usize = f.integer("chunkSize")
        coff = f.integer("offset")
        cend = objs[k + 1].integer("offset") if k + 1 < len(objs) else end
        if f.integer("chunkOffset") != pos:
            raise ZstdChunkedError(f"{f.where}: chunkOffset is not where the last chunk ended")
        if usize <= 0 or coff <= 0 or cend <= coff:
            raise ZstdChunkedError(f"{f.where}: an empty chunk or a bad compressed range")
        kind = f.text("chunkType")
        if kind not in ("", "zeros"):
            raise ZstdChunkedError(f"{f.where}: unknown chunkType {kind!r}")
        zeros = kind == "zeros"
        chunk_sha = f.digest("chunkDigest")
        if zeros:
            expect = _zeros_sha256(usize)
            if chunk_sha is not None and chunk_sha != expect:
                raise ZstdChunkedError(f"{f.where}: a zeros chunk with another digest")
            chunk_sha = expect
        if chunk_sha is None:
            raise ZstdChunkedError(f"{f.where}: a chunk without chunkDigest")
        out.append((coff, cend, usize, chunk_sha, zeros))
        pos += usize
    if out[0][0] != start:
        raise ZstdChunkedError(f"{where}: the first chunk does not start at the file's offset")
    if pos != size:
        raise ZstdChunkedError(f"{where}: chunks cover {pos} bytes of a {size}-byte file")
    return out


def _items_from_json(doc: Any) -> tuple[list[_Item], str | None]:
    top = _Fields(doc, "manifest")
    if top.integer("version", hi=1 << 31) != 1:
        raise ZstdChunkedError(f"manifest version {doc.get('version')!r} is not supported")
    ts_digest = top.obj.get("tarSplitDigest")
    if ts_digest is not None and (
        not isinstance(ts_digest, str) or not _DIGEST_RE.fullmatch(ts_digest)
    ):
        raise ZstdChunkedError("manifest tarSplitDigest is not a sha256 digest")
    raw = top.obj.get("entries")
    if not isinstance(raw, list):
        raise ZstdChunkedError("manifest 'entries' is not a list")
    items: list[_Item] = []
    i = 0
    n = len(raw)
    while i < n:
        f = _Fields(raw[i], f"manifest entry {i}")
        kind = f.text("type")
        if kind == "chunk":
            raise ZstdChunkedError(f"{f.where}: a chunk entry that follows no regular file")
        if kind not in _TYPES:
            raise ZstdChunkedError(f"{f.where}: unknown type {kind!r}")
        name = f.raw("name")
        path = normalize_name(name, f.where)
        code = _TYPES[kind]
        chunk_objs: list[_Fields] = []
        j = i + 1
        while j < n and isinstance(raw[j], dict) and raw[j].get("type") == "chunk":
            c = _Fields(raw[j], f"manifest entry {j}")
            if c.raw("name") != name:
                raise ZstdChunkedError(f"{c.where}: a chunk of another file than entry {i}")
            chunk_objs.append(c)
            j += 1
        size = f.integer("size")
        digest = f.digest("digest")
        chunks: list[tuple[int, int, int, bytes, bool]] = []
        link = b""
        if code == TYPE_FILE:
            chunks = _chunks_of(f, chunk_objs, size, digest)
        else:
            if chunk_objs or f.integer("offset") or f.integer("endOffset"):
                raise ZstdChunkedError(f"{f.where}: a {kind} entry has content")
            if size and code != TYPE_HARDLINK:
                raise ZstdChunkedError(f"{f.where}: a {kind} entry has a size")
            size = 0
            digest = None
            if code in (TYPE_SYMLINK, TYPE_HARDLINK):
                link = f.raw("linkName")
                if not link or b"\0" in link:
                    raise ZstdChunkedError(f"{f.where}: a {kind} without a valid linkName")
                if code == TYPE_HARDLINK:
                    link = normalize_name(link, f.where + " linkName")
        rdev = (0, 0)
        if code in (TYPE_CHAR, TYPE_BLOCK):
            rdev = (f.integer("devMajor", hi=_MAX_U32), f.integer("devMinor", hi=_MAX_U32))
        items.append(
            _Item(
                index=i,
                path=path,
                type_code=code,
                mode=f.integer("mode", hi=0o7777777) & 0o7777,
                uid=f.integer("uid", hi=_MAX_U32),
                gid=f.integer("gid", hi=_MAX_U32),
                mtime=f.time("modtime"),
                size=size,
                link=link,
                xattrs=f.xattrs(),
                rdev=rdev,
                sha256=digest,
                chunks=chunks,
            )
        )
        i = j
    return items, ts_digest


def _resolve_hardlinks(items: list[_Item]) -> None:
    """Root each hardlink set at its first path in canonical order (in place)."""
    by_path: dict[bytes, _Item] = {}
    for it in items:
        if it.path in by_path:
            raise ZstdChunkedError(f"manifest entry {it.index}: duplicate path {it.path!r}")
        by_path[it.path] = it
    groups: dict[bytes, list[_Item]] = {}
    for it in items:
        if it.type_code != TYPE_HARDLINK:
            continue
        target = by_path.get(it.link)
        for _ in range(len(items)):
            if target is None or target.type_code != TYPE_HARDLINK:
                break
            target = by_path.get(target.link)
        if target is None or target.type_code != TYPE_FILE:
            raise ZstdChunkedError(
                f"manifest entry {it.index}: hardlink {it.path!r} -> {it.link!r} "
                "does not name a regular file of this layer"
            )
        groups.setdefault(target.path, [target]).append(it)
    for members in groups.values():
        source = members[0]
        first = min(members, key=lambda m: m.path.split(b"/"))
        size, sha, chunks = source.size, source.sha256, source.chunks
        for m in members:
            if m is first:
                m.type_code, m.size, m.sha256, m.chunks, m.link = TYPE_FILE, size, sha, chunks, b""
            else:
                m.type_code, m.size, m.sha256, m.chunks, m.link = (
                    TYPE_HARDLINK, size, sha, [], first.path,
                )  # fmt: skip


def _build_toc(items: list[_Item], diff_id: bytes, data_end: int) -> tuple[Toc, np.ndarray]:
    # Frames: every chunk, in blob order; uoff is the payload space in that order.
    spans = sorted((c[0], c[1], c[2], id(it), k) for it in items for k, c in enumerate(it.chunks))
    prev_end = 0
    frame_of: dict[tuple[int, int], tuple[int, int]] = {}
    builder = TocBuilder(ROLLSUM_CDC)
    uoff = 0
    for coff, cend, usize, owner, k in spans:
        if coff < prev_end:
            raise ZstdChunkedError(f"two chunks overlap in the blob at offset {coff}")
        if cend > data_end:
            raise ZstdChunkedError(f"a chunk at {coff} runs into the manifest at {data_end}")
        if cend - coff > _MAX_U32 or usize > _MAX_U32:
            raise ZstdChunkedError(f"a chunk at {coff} is larger than 4 GiB (not supported)")
        fi = builder.add_frame(coff, uoff, cend - coff, usize)
        frame_of[(owner, k)] = (fi, uoff)
        uoff += usize
        prev_end = cend
    items.sort(key=lambda it: it.path.split(b"/"))
    zeros: list[bool] = []
    for it in items:
        first_chunk = builder.n_chunks
        payload_uoff = 0
        for k, (_coff, _cend, usize, sha, is_zero) in enumerate(it.chunks):
            fi, fu = frame_of[(id(it), k)]
            if k == 0:
                payload_uoff = fu
            builder.add_chunk(fu, usize, sha, 0, fi)
            zeros.append(is_zero)
        builder.add_entry(
            type_code=it.type_code,
            path=it.path,
            mode=it.mode,
            uid=it.uid,
            gid=it.gid,
            mtime=it.mtime,
            size=it.size,
            link=it.link,
            xattrs=it.xattrs,
            rdev=it.rdev,
            first_chunk=first_chunk if it.chunks else 0,
            n_chunks=len(it.chunks),
            payload_uoff=payload_uoff,
            # As our writer does: a hardlink carries its file's digest, an empty file
            # the sha256 of b"", entries without content zeros.
            sha256=it.sha256
            or (_EMPTY_SHA256 if it.type_code in (TYPE_FILE, TYPE_HARDLINK) else bytes(32)),
        )
    return builder.finish(uoff, diff_id), np.array(zeros, dtype=np.bool_)


def _validate_converted(toc: Toc) -> None:
    """Our TOC rules, with frames allowed to leave gaps in the blob.

    The gaps were checked while building (ordered, non-overlapping, before the
    manifest); here every other rule of docs/format.md runs on a copy whose frames
    are packed, so uoff, chunks, entries, paths and hardlinks get the same checks as
    our own TOCs.  (toc.py has no flag for gapped frames yet.)
    """
    packed = toc.frames.copy()
    if len(packed):
        csize = packed["csize"].astype(np.uint64)
        packed["coff"] = np.concatenate(([0], np.cumsum(csize)[:-1])).astype(np.uint64)
    try:
        validate(dataclasses.replace(toc, frames=packed))
    except ZstdChunkedError:
        raise
    except TocError as exc:
        raise ZstdChunkedError(f"zstd:chunked manifest: {exc}") from None


def _coerce_diff_id(diff_id: bytes | str | None) -> bytes:
    if diff_id is None:
        return bytes(32)
    if isinstance(diff_id, str):
        if not _DIGEST_RE.fullmatch(diff_id):
            raise ZstdChunkedError(f"diff_id {diff_id!r} is not a sha256 digest")
        return bytes.fromhex(diff_id[7:])
    if len(diff_id) != 32:
        raise ZstdChunkedError("diff_id must be 32 raw bytes")
    return bytes(diff_id)


def decode_manifest(
    compressed: bytes,
    location: ZstdChunkedLocation,
    *,
    diff_id: bytes | str | None = None,
    max_manifest_size: int = MAX_MANIFEST_SIZE,
) -> ZstdChunkedLayer:
    """Verify, decompress, parse and convert a manifest fetched from ``location``.

    ``compressed`` is the ``location.manifest`` span of the blob (the skippable
    frame's payload).  Its sha256 must match the annotation before anything else
    happens; decompression is capped by the annotated size and ``max_manifest_size``.
    """
    span = location.manifest
    if len(compressed) != span.length:
        raise ZstdChunkedError(
            f"manifest is {len(compressed)} bytes, the annotation says {span.length}"
        )
    got = "sha256:" + hashlib.sha256(compressed).hexdigest()
    if got != location.manifest_digest:
        raise ZstdChunkedError(
            f"manifest digest mismatch: annotation says {location.manifest_digest}, bytes are {got}"
        )
    if span.uncompressed_size > max_manifest_size:
        raise ZstdChunkedError(
            f"manifest would decompress to {span.uncompressed_size} bytes "
            f"(the limit is {max_manifest_size})"
        )
    data = _decompress_exact(compressed, span.uncompressed_size, "manifest")
    items, ts_digest = _items_from_json(_parse_json(data, "manifest"))
    _resolve_hardlinks(items)
    toc, zeros = _build_toc(items, _coerce_diff_id(diff_id), span.offset - SKIPPABLE_HEADER)
    _validate_converted(toc)
    lossy = tuple(i for i in range(len(toc)) if b"\xef\xbf\xbd" in toc.path(i))
    return ZstdChunkedLayer(
        toc=toc,
        location=location,
        zero_chunks=zeros,
        lossy_paths=lossy,
        tar_split_digest=ts_digest,
    )


def _decompress_exact(compressed: bytes, size: int, what: str) -> bytes:
    # Read at most one byte past the annotated size: a bomb stops there.
    parts: list[bytes] = []
    got = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed))
        while got <= size:
            piece = reader.read(min(size + 1 - got, 1 << 20))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
    except zstandard.ZstdError as exc:
        raise ZstdChunkedError(f"{what} does not decompress: {exc}") from None
    out = b"".join(parts)
    if len(out) != size:
        raise ZstdChunkedError(f"{what} decompresses to other than the annotated {size} bytes")
    return out


def _read_exact(read_range: ReadRange, offset: int, length: int, what: str) -> bytes:
    data = read_range(offset, length)
    if len(data) != length:
        raise ZstdChunkedError(f"{what}: asked for {length} bytes at {offset}, got {len(data)}")
    return data


def read_zstd_chunked_toc(
    annotations: Mapping[str, str],
    read_range: ReadRange,
    *,
    blob_size: int | None = None,
    diff_id: bytes | str | None = None,
    max_manifest_size: int = MAX_MANIFEST_SIZE,
) -> ZstdChunkedLayer:
    """Fetch (one range), verify and convert a zstd:chunked layer's TOC.

    ``annotations`` and ``blob_size`` come from the layer descriptor, ``diff_id``
    from the image config.
    """
    location = parse_annotations(annotations, blob_size=blob_size)
    span = location.manifest
    if span.uncompressed_size > max_manifest_size:
        raise ZstdChunkedError(
            f"manifest would decompress to {span.uncompressed_size} bytes "
            f"(the limit is {max_manifest_size})"
        )
    data = _read_exact(read_range, span.offset, span.length, "manifest")
    return decode_manifest(data, location, diff_id=diff_id, max_manifest_size=max_manifest_size)


def read_chunk(layer: ZstdChunkedLayer, c: int, read_range: ReadRange) -> bytes:
    """Chunk ``c``'s bytes, fetched from its compressed range alone and verified."""
    toc = layer.toc
    usize = int(toc.chunks[c]["usize"])
    expect = toc.chunk_sha256(c)
    if bool(layer.zero_chunks[c]):
        return bytes(usize)
    coff, csize = layer.chunk_range(c)
    data = _read_exact(read_range, coff, csize, f"chunk {c}")
    try:
        out = decompress_frame(data, usize)
    except CompressionError as exc:
        raise ZstdChunkedError(f"chunk {c} at {coff} does not decompress: {exc}") from None
    if len(out) != usize or hashlib.sha256(out).digest() != expect:
        raise ZstdChunkedError(f"chunk {c} at {coff} does not match its sha256")
    return out


# --- tar-split ----------------------------------------------------------------------


def _record(obj: Any, expect_position: int) -> TarSplitRecord:
    f = _Fields(obj, f"tar-split record {expect_position}")
    kind = f.integer("type", hi=2)
    if f.integer("position", hi=1 << 62) != expect_position:
        raise ZstdChunkedError(f"{f.where}: positions are not consecutive")
    raw = f.obj.get("payload")
    payload = b""
    if raw is not None:
        if not isinstance(raw, str):
            raise ZstdChunkedError(f"{f.where}: payload is not base64")
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ZstdChunkedError(f"{f.where}: payload is not base64") from None
    if kind == 2:
        if "name" in f.obj or f.integer("size"):
            raise ZstdChunkedError(f"{f.where}: a segment with a name or size")
        return TarSplitRecord("segment", expect_position, payload=payload)
    if kind != 1:
        raise ZstdChunkedError(f"{f.where}: unknown record type {kind}")
    name_raw = f.obj.get("name_raw")
    if name_raw is not None:
        try:
            name = base64.b64decode(name_raw, validate=True) if isinstance(name_raw, str) else None
        except (binascii.Error, ValueError):
            name = None
        if name is None:
            raise ZstdChunkedError(f"{f.where}: name_raw is not base64")
    else:
        name = f.raw("name")
    return TarSplitRecord(
        "file", expect_position, name=name, size=f.integer("size"), payload=payload
    )


def decode_tar_split(
    compressed: bytes,
    span: BlobSpan,
    *,
    expected_digest: str | None,
    max_size: int = MAX_TAR_SPLIT_SIZE,
) -> Iterator[TarSplitRecord]:
    """Verify the tar-split frame's payload, then stream its records.

    ``expected_digest`` is the manifest's ``tarSplitDigest`` (the sha256 of the
    compressed bytes); it is checked before anything is decompressed.  Records are
    JSON lines; the output is capped by the annotated size and ``max_size``, each
    line by 16 MiB.
    """
    if len(compressed) != span.length:
        raise ZstdChunkedError("tar-split is not the annotated length")
    if expected_digest is not None:
        got = "sha256:" + hashlib.sha256(compressed).hexdigest()
        if got != expected_digest:
            raise ZstdChunkedError(
                f"tar-split digest mismatch: the manifest says {expected_digest}, bytes are {got}"
            )
    if span.uncompressed_size > max_size:
        raise ZstdChunkedError(
            f"tar-split would decompress to {span.uncompressed_size} bytes (limit {max_size})"
        )
    return _iter_tar_split(compressed, span.uncompressed_size)


def _iter_tar_split(compressed: bytes, size: int) -> Iterator[TarSplitRecord]:
    reader = io.BufferedReader(
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed)),
        buffer_size=1 << 16,
    )
    total = 0
    position = 0
    try:
        while True:
            line = reader.readline(MAX_TAR_SPLIT_LINE + 1)
            if not line:
                break
            total += len(line)
            if total > size:
                raise ZstdChunkedError(f"tar-split holds more than the annotated {size} bytes")
            if len(line) > MAX_TAR_SPLIT_LINE or not line.endswith(b"\n"):
                raise ZstdChunkedError(f"tar-split record {position} is too long or truncated")
            yield _record(_parse_json(line, f"tar-split record {position}"), position)
            position += 1
    except zstandard.ZstdError as exc:
        raise ZstdChunkedError(f"tar-split does not decompress: {exc}") from None
    if total != size:
        raise ZstdChunkedError(f"tar-split is {total} bytes, the annotation says {size}")


def read_tar_split(
    layer: ZstdChunkedLayer, read_range: ReadRange, *, max_size: int = MAX_TAR_SPLIT_SIZE
) -> Iterator[TarSplitRecord] | None:
    """The layer's tar-split records, or None when the writer stored none.

    skopeo 1.9 / podman 4.3 write no tar-split; containers/storage 1.48+ do.
    """
    span = layer.location.tar_split
    if span is None:
        return None
    if layer.tar_split_digest is None:
        raise ZstdChunkedError("the tar-split has no digest in the manifest to verify it by")
    if span.uncompressed_size > max_size:
        raise ZstdChunkedError(
            f"tar-split would decompress to {span.uncompressed_size} bytes (limit {max_size})"
        )
    data = _read_exact(read_range, span.offset, span.length, "tar-split")
    return decode_tar_split(data, span, expected_digest=layer.tar_split_digest, max_size=max_size)


def regenerate_tar(
    records: Iterable[TarSplitRecord],
    file_content: Callable[[bytes], Iterable[bytes]],
    *,
    sink: Callable[[bytes], object] | None = None,
    expected_diff_id: str | None = None,
) -> tuple[str, int]:
    """Rebuild the layer's exact tar from tar-split records and file contents.

    ``file_content(path)`` yields the payload of the regular file at ``path`` (our
    normal form, see :func:`normalize_name`), e.g. from verified chunks.  Returns
    ``("sha256:...", size)`` of the tar written to ``sink``; with
    ``expected_diff_id`` a mismatch raises.
    """
    h = hashlib.sha256()
    total = 0

    def emit(data: bytes) -> None:
        nonlocal total
        h.update(data)
        total += len(data)
        if sink is not None:
            sink(data)

    for rec in records:
        if rec.kind == "segment":
            if rec.payload:
                emit(rec.payload)
            continue
        if rec.size == 0:
            continue
        path = normalize_name(rec.name, f"tar-split record {rec.position}")
        got = 0
        for piece in file_content(path):
            got += len(piece)
            if got > rec.size:
                break
            emit(piece)
        if got != rec.size:
            raise ZstdChunkedError(
                f"tar-split record {rec.position}: {path!r} gave {got} bytes, expected {rec.size}"
            )
    digest = "sha256:" + h.hexdigest()
    if expected_diff_id is not None and digest != expected_diff_id:
        raise ZstdChunkedError(
            f"the regenerated tar is {digest}, the image config's diff_id is {expected_diff_id}"
        )
    return digest, total
