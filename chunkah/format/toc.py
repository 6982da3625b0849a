"""The table of contents of a chunked layer blob: model, encoder, strict decoder.

Byte layout: docs/format.md, section 3.  Tables are numpy structured arrays, so a
100 000-entry TOC parses in milliseconds and stays compact in memory; paths are
decoded only when asked for.
"""

from __future__ import annotations

import hashlib
import operator
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zstandard

from chunkah.compression import CompressionError, decompress_frame
from chunkah.errors import VerificationError

__all__ = [
    "CHUNK_DTYPE",
    "ENTRY_DTYPE",
    "FRAME_DTYPE",
    "TOC_MAGIC",
    "TOC_SKIPPABLE_MAGIC",
    "CdcSettings",
    "Toc",
    "TocBuilder",
    "TocEntry",
    "TocError",
    "decode_toc_frame",
    "encode_toc_frame",
]

TOC_SKIPPABLE_MAGIC = 0x184D2A5C
TOC_MAGIC = b"CHKTOC\x00\x01"
TOC_VERSION = 1
HEADER = struct.Struct("<8sII Q32s QQQQ IIII Q16s")
assert HEADER.size == 128

FRAME_DTYPE = np.dtype([("coff", "<u8"), ("uoff", "<u8"), ("csize", "<u4"), ("usize", "<u4")])
CHUNK_DTYPE = np.dtype(
    [("uoff", "<u8"), ("xxh3", "<u8"), ("sha256", "V32"), ("usize", "<u4"), ("frame", "<u4")]
)
ENTRY_DTYPE = np.dtype(
    [
        ("type", "u1"),
        ("_r0", "V3"),
        ("mode", "<u4"),
        ("uid", "<u4"),
        ("gid", "<u4"),
        ("mtime", "<i8"),
        ("size", "<u8"),
        ("path_off", "<u8"),
        ("path_len", "<u4"),
        ("link_len", "<u4"),
        ("xattr_off", "<u8"),
        ("xattr_len", "<u4"),
        ("n_xattrs", "<u4"),
        ("dev_major", "<u4"),
        ("dev_minor", "<u4"),
        ("first_chunk", "<u8"),
        ("n_chunks", "<u4"),
        ("_r1", "<u4"),
        ("payload_uoff", "<u8"),
        ("sha256", "V32"),
    ]
)
assert FRAME_DTYPE.itemsize == 24 and CHUNK_DTYPE.itemsize == 56 and ENTRY_DTYPE.itemsize == 128

TYPE_FILE, TYPE_DIR, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_FIFO, TYPE_HARDLINK = range(7)
TYPE_NAMES = ("file", "dir", "symlink", "char", "block", "fifo", "hardlink")

MAX_ENTRIES = 16 << 20
MAX_CHUNKS = 64 << 20
MAX_BODY = 1 << 30
# A frame is decompressed in memory as a whole: bound it.  Our writer's frames are a
# chunk (cdc_max) or a packed frame (~pack_target); zstd:chunked chunks have no maximum
# but stay far below this in practice.
MAX_FRAME = 256 << 20
_ZERO32 = bytes(32)
_CHECK_BATCH = 8192  # entries per batch of path checks (bounds their memory)
# Absolute, '.', '..', empty components, trailing '/', NUL: anything but the normal form.
_BAD_PATH = re.compile(rb"\A/|/\Z|//|\x00|(?:\A|/)\.\.?(?:/|\Z)")


class TocError(VerificationError):
    """A TOC that is malformed, lies about the blob, or does not match its digest."""


@dataclass(frozen=True)
class CdcSettings:
    min_size: int
    avg_size: int
    max_size: int
    normalization: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TocEntry:
    """One entry, decoded (paths as bytes)."""

    index: int
    type: str
    path: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    link: bytes
    xattrs: tuple[tuple[str, bytes], ...]
    rdev: tuple[int, int]
    first_chunk: int
    n_chunks: int
    payload_uoff: int
    sha256: bytes


def _encode_xattrs(xattrs: tuple[tuple[str, bytes], ...]) -> bytes:
    out = bytearray()
    for name, value in xattrs:
        raw = name.encode("utf-8", "surrogateescape")
        out += struct.pack("<H", len(raw)) + raw + struct.pack("<I", len(value)) + value
    return bytes(out)


def _decode_xattrs(data: bytes, count: int, where: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    pos = 0
    try:
        for _ in range(count):
            (n,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2 : pos + 2 + n].decode("utf-8", "surrogateescape")
            pos += 2 + n
            (m,) = struct.unpack_from("<I", data, pos)
            value = data[pos + 4 : pos + 4 + m]
            if len(value) != m:
                raise struct.error
            pos += 4 + m
            out.append((name, bytes(value)))
    except struct.error:
        raise TocError(f"{where}: truncated xattrs") from None
    if pos != len(data):
        raise TocError(f"{where}: xattrs length does not match their count")
    return tuple(out)


@dataclass
class Toc:
    """A decoded (or freshly built) table of contents."""

    tar_size: int
    diff_id: bytes  # raw sha256 of the tar
    cdc: CdcSettings
    frames: npt.NDArray[np.void]
    chunks: npt.NDArray[np.void]
    entries: npt.NDArray[np.void]
    strings: bytes

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def diff_id_digest(self) -> str:
        return "sha256:" + self.diff_id.hex()

    def path(self, i: int) -> bytes:
        e = self.entries[i]
        off = int(e["path_off"])
        return self.strings[off : off + int(e["path_len"])]

    def entry(self, i: int) -> TocEntry:
        e = self.entries[i]
        off, plen, llen = int(e["path_off"]), int(e["path_len"]), int(e["link_len"])
        xoff, xlen = int(e["xattr_off"]), int(e["xattr_len"])
        return TocEntry(
            index=i,
            type=TYPE_NAMES[int(e["type"])],
            path=self.strings[off : off + plen],
            mode=int(e["mode"]),
            uid=int(e["uid"]),
            gid=int(e["gid"]),
            mtime=int(e["mtime"]),
            size=int(e["size"]),
            link=self.strings[off + plen : off + plen + llen],
            xattrs=_decode_xattrs(
                self.strings[xoff : xoff + xlen], int(e["n_xattrs"]), f"entry {i}"
            ),
            rdev=(int(e["dev_major"]), int(e["dev_minor"])),
            first_chunk=int(e["first_chunk"]),
            n_chunks=int(e["n_chunks"]),
            payload_uoff=int(e["payload_uoff"]),
            sha256=bytes(e["sha256"]),
        )

    def __iter__(self) -> Iterator[TocEntry]:
        for i in range(len(self.entries)):
            yield self.entry(i)

    def chunk_sha256(self, c: int) -> bytes:
        return bytes(self.chunks[c]["sha256"])

    def compressed_size(self) -> int:
        if not len(self.frames):
            return 0
        last = self.frames[-1]
        return int(last["coff"]) + int(last["csize"])


class TocBuilder:
    """Accumulates frames, chunks and entries while a layer is written."""

    def __init__(self, cdc: CdcSettings) -> None:
        self.cdc = cdc
        self._frames: list[tuple[int, int, int, int]] = []
        self._chunks: list[tuple[int, int, bytes, int, int]] = []
        self._entries: list[tuple[object, ...]] = []
        self._strings = bytearray()

    @property
    def n_frames(self) -> int:
        return len(self._frames)

    @property
    def n_chunks(self) -> int:
        return len(self._chunks)

    def add_frame(self, coff: int, uoff: int, csize: int, usize: int) -> int:
        self._frames.append((coff, uoff, csize, usize))
        return len(self._frames) - 1

    def add_chunk(self, uoff: int, usize: int, sha256: bytes, xxh3: int, frame: int) -> int:
        self._chunks.append((uoff, xxh3, sha256, usize, frame))
        return len(self._chunks) - 1

    def add_entry(
        self,
        *,
        type_code: int,
        path: bytes,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
        size: int,
        link: bytes = b"",
        xattrs: tuple[tuple[str, bytes], ...] = (),
        rdev: tuple[int, int] = (0, 0),
        first_chunk: int = 0,
        n_chunks: int = 0,
        payload_uoff: int = 0,
        sha256: bytes = _ZERO32,
    ) -> None:
        path_off = len(self._strings)
        self._strings += path + link
        xattr_raw = _encode_xattrs(xattrs)
        xattr_off = len(self._strings)
        self._strings += xattr_raw
        self._entries.append(
            (
                type_code, b"\0\0\0", mode, uid, gid, mtime, size, path_off, len(path), len(link),
                xattr_off, len(xattr_raw), len(xattrs), rdev[0], rdev[1], first_chunk, n_chunks, 0,
                payload_uoff, sha256,
            )
        )  # fmt: skip

    def finish(self, tar_size: int, diff_id: bytes) -> Toc:
        return Toc(
            tar_size=tar_size,
            diff_id=diff_id,
            cdc=self.cdc,
            frames=np.array(self._frames, dtype=FRAME_DTYPE),
            chunks=np.array(self._chunks, dtype=CHUNK_DTYPE),
            entries=np.array(self._entries, dtype=ENTRY_DTYPE),
            strings=bytes(self._strings),
        )


def encode_body(toc: Toc) -> bytes:
    c = toc.cdc
    header = HEADER.pack(
        TOC_MAGIC, TOC_VERSION, 0, toc.tar_size, toc.diff_id, len(toc.frames), len(toc.chunks),
        len(toc.entries), len(toc.strings), c.min_size, c.avg_size, c.max_size, c.normalization,
        c.seed, bytes(16),
    )  # fmt: skip
    return b"".join(
        [header, toc.frames.tobytes(), toc.chunks.tobytes(), toc.entries.tobytes(), toc.strings]
    )


def encode_toc_frame(toc: Toc, *, level: int = 10) -> tuple[bytes, int]:
    """The TOC as a zstd skippable frame, and the body's uncompressed size."""
    body = encode_body(toc)
    compressed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(body)
    return struct.pack("<II", TOC_SKIPPABLE_MAGIC, len(compressed)) + compressed, len(body)


def decode_toc_frame(
    frame: bytes,
    *,
    expected_digest: str | None,
    body_size: int,
    toc_offset: int | None = None,
) -> Toc:
    """Verify and parse a TOC frame fetched from a blob.

    ``expected_digest`` comes from the layer descriptor's annotation (None only for
    a TOC read from a blob whose digest was verified as a whole); ``body_size`` caps
    decompression; ``toc_offset`` (where the frame sits in the blob) lets the frames
    be checked against the blob.
    """
    if expected_digest is not None:
        got = "sha256:" + hashlib.sha256(frame).hexdigest()
        if got != expected_digest:
            raise TocError(
                f"TOC digest mismatch: annotation says {expected_digest}, bytes are {got}"
            )
    if len(frame) < 8:
        raise TocError("TOC frame is truncated")
    magic, size = struct.unpack_from("<II", frame)
    if magic != TOC_SKIPPABLE_MAGIC:
        raise TocError(f"not a chunkah TOC frame (magic {magic:#x})")
    if size != len(frame) - 8:
        raise TocError(f"TOC frame says {size} bytes but holds {len(frame) - 8}")
    if not 0 < body_size <= MAX_BODY:
        raise TocError(f"TOC body size {body_size} is out of range (at most {MAX_BODY})")
    try:
        body = decompress_frame(frame[8:], body_size)
    except CompressionError as exc:
        raise TocError(
            f"TOC does not decompress to the {body_size} bytes the annotation says: {exc}"
        ) from None
    return parse_body(body, toc_offset=toc_offset)


def parse_body(body: bytes, *, toc_offset: int | None = None) -> Toc:
    if len(body) < HEADER.size:
        raise TocError("TOC body is shorter than its header")
    (
        magic, version, flags, tar_size, diff_id, n_frames, n_chunks, n_entries, strings_size,
        cmin, cavg, cmax, cnorm, cseed, _reserved,
    ) = HEADER.unpack_from(body)  # fmt: skip
    if magic != TOC_MAGIC:
        raise TocError("TOC body has a bad magic")
    if version != TOC_VERSION or flags != 0:
        raise TocError(
            f"TOC version {version} (flags {flags:#x}) is not supported; expected {TOC_VERSION}"
        )
    if n_entries > MAX_ENTRIES or n_chunks > MAX_CHUNKS or n_frames > MAX_CHUNKS + n_entries + 1:
        raise TocError(
            f"TOC counts too large: {n_entries} entries, {n_chunks} chunks, {n_frames} frames"
        )
    sizes = (
        n_frames * FRAME_DTYPE.itemsize,
        n_chunks * CHUNK_DTYPE.itemsize,
        n_entries * ENTRY_DTYPE.itemsize,
    )
    expected = HEADER.size + sum(sizes) + strings_size
    if expected != len(body):
        raise TocError(f"TOC body is {len(body)} bytes, its header implies {expected}")
    pos = HEADER.size
    arrays = []
    for dtype, nbytes in zip((FRAME_DTYPE, CHUNK_DTYPE, ENTRY_DTYPE), sizes, strict=True):
        arrays.append(np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos))
        pos += nbytes
    toc = Toc(
        tar_size=tar_size,
        diff_id=diff_id,
        cdc=CdcSettings(cmin, cavg, cmax, cnorm, cseed),
        frames=arrays[0],
        chunks=arrays[1],
        entries=arrays[2],
        strings=body[pos:],
    )
    validate(toc, toc_offset=toc_offset)
    return toc


def validate(toc: Toc, *, toc_offset: int | None = None) -> None:
    """Every structural promise of docs/format.md section 3, or a TocError."""
    f, c = toc.frames, toc.chunks
    if len(f):
        coff = f["coff"].astype(np.int64)
        uoff = f["uoff"].astype(np.int64)
        csize = f["csize"].astype(np.int64)
        usize = f["usize"].astype(np.int64)
        if coff[0] != 0 or uoff[0] != 0:
            raise TocError("the first frame does not start the blob and the tar")
        if (csize <= 0).any() or (usize <= 0).any():
            raise TocError("a frame has a zero size")
        if (usize > MAX_FRAME).any():
            raise TocError(
                f"a frame decompresses to more than {MAX_FRAME} bytes (a decompression bomb?)"
            )
        if (coff[1:] != coff[:-1] + csize[:-1]).any() or (uoff[1:] != uoff[:-1] + usize[:-1]).any():
            raise TocError("frames are not contiguous")
        if uoff[-1] + usize[-1] != toc.tar_size:
            raise TocError("frames do not end at the end of the tar")
        if toc_offset is not None and coff[-1] + csize[-1] > toc_offset:
            raise TocError("frames run past the TOC")
    elif toc.tar_size:
        raise TocError("a non-empty tar has no frames")
    if len(c):
        fi = c["frame"].astype(np.int64)
        if (fi >= len(f)).any():
            raise TocError("a chunk points at a frame that does not exist")
        cu = c["uoff"].astype(np.int64)
        cs = c["usize"].astype(np.int64)
        fu = f["uoff"].astype(np.int64)[fi]
        fs = f["usize"].astype(np.int64)[fi]
        if (cs <= 0).any() or (cu < fu).any() or (cu + cs > fu + fs).any():
            raise TocError("a chunk lies outside its frame")
    _validate_entries(toc)


def _validate_entries(toc: Toc) -> None:
    e, c = toc.entries, toc.chunks
    n_strings = len(toc.strings)
    if len(e) == 0:
        return
    types = e["type"]
    if (types > TYPE_HARDLINK).any():
        raise TocError("an entry has an unknown type")
    ends = e["path_off"].astype(np.uint64) + e["path_len"] + e["link_len"]
    xends = e["xattr_off"].astype(np.uint64) + e["xattr_len"]
    if (ends > n_strings).any() or (xends > n_strings).any():
        raise TocError("an entry's strings lie outside the strings section")
    first = e["first_chunk"].astype(np.int64)
    count = e["n_chunks"].astype(np.int64)
    if (first + count > len(c)).any():
        raise TocError("an entry's chunks lie outside the chunk table")
    is_file = types == TYPE_FILE
    if ((~is_file) & (count != 0)).any():
        raise TocError("an entry that is not a regular file has chunks")
    if ((types != TYPE_FILE) & (types != TYPE_HARDLINK) & (e["size"] != 0)).any():
        raise TocError("an entry that is not a file has a size")
    sizes = e["size"].astype(np.int64)
    payload = e["payload_uoff"].astype(np.int64)
    if (is_file & (sizes > 0) & (payload + sizes > toc.tar_size)).any():
        raise TocError("a file's payload lies outside the tar")
    # Chunks of each file: consecutive, in order, covering the payload exactly.
    files = np.flatnonzero(is_file & (sizes > 0))
    if len(files):
        if (count[files] == 0).any():
            raise TocError("a non-empty file has no chunks")
        cu = c["uoff"].astype(np.int64)
        cs = c["usize"].astype(np.int64)
        owner = np.repeat(files, count[files])
        per_file = count[files]
        # Chunk indices of every file, back to back: first[i] .. first[i] + count[i].
        idx = np.repeat(first[files] - (np.cumsum(per_file) - per_file), per_file) + np.arange(
            int(per_file.sum())
        )
        order = np.argsort(first[files], kind="stable")
        f_first, f_count = first[files][order], per_file[order]
        if (f_first[1:] < f_first[:-1] + f_count[:-1]).any():
            raise TocError("two files share chunk table entries")
        starts = first[files]
        if (cu[starts] != payload[files]).any():
            raise TocError("a file's first chunk does not start at its payload")
        nxt = idx[1:]
        same = owner[1:] == owner[:-1]
        if (cu[nxt][same] != (cu[idx[:-1]] + cs[idx[:-1]])[same]).any():
            raise TocError("a file's chunks are not contiguous")
        covered = np.bincount(np.searchsorted(files, owner), weights=cs[idx], minlength=len(files))
        if (covered.astype(np.int64) != sizes[files]).any():
            raise TocError("a file's chunks do not cover its size")
    # Paths: normal form, unique, canonical order; links point backwards at files.
    strings = toc.strings
    offs = e["path_off"].tolist()
    lens = e["path_len"].tolist()
    llens = e["link_len"].tolist()
    tlist = types.tolist()

    def path_of(i: int) -> bytes:
        return strings[offs[i] : offs[i] + lens[i]]

    def path_key(i: int) -> bytes:
        return path_of(i).replace(b"/", b"\0")

    if any(b"\0" in strings[o : o + n] for o, n in zip(offs, lens, strict=True)):
        i = next(k for k in range(len(lens)) if b"\0" in path_of(k))
        raise TocError(f"entry {i} has an unsafe or non-normal path {path_of(i)!r}")
    # '/' -> NUL makes byte order equal component order (NUL is in no name, checked
    # above); joined by NUL, an empty, '.' or '..' component (or a leading/trailing
    # '/') shows up as NUL NUL, NUL . NUL or NUL .. NUL.  Done in batches so the keys
    # never all sit in memory at once.
    prev: bytes | None = None
    for start in range(0, len(lens), _CHECK_BATCH):
        keys = [
            strings[o : o + n].replace(b"/", b"\0")
            for o, n in zip(
                offs[start : start + _CHECK_BATCH], lens[start : start + _CHECK_BATCH], strict=True
            )
        ]
        body = b"\0" + b"\0".join(keys[1:] if start == 0 and keys[0] == b"" else keys) + b"\0"
        if b"\0\0" in body or b"\0.\0" in body or b"\0..\0" in body:
            i = next(
                k for k in range(len(lens)) if _BAD_PATH.search(path_of(k)) or (k and not lens[k])
            )
            raise TocError(f"entry {i} has an unsafe or non-normal path {path_of(i)!r}")
        if (prev is not None and keys[0] <= prev) or not all(map(operator.lt, keys, keys[1:])):
            i = next(
                k for k in range(max(1, start), start + len(keys)) if path_key(k) <= path_key(k - 1)
            )
            raise TocError(f"entry {i} ({path_of(i)!r}) is duplicated or out of canonical order")
        prev = keys[-1]
    hardlinks = [i for i, t in enumerate(tlist) if t == TYPE_HARDLINK]
    if hardlinks:
        index_of = {path_of(i): i for i, t in enumerate(tlist) if t == TYPE_FILE}
        for i in hardlinks:
            target = strings[offs[i] + lens[i] : offs[i] + lens[i] + llens[i]]
            j = index_of.get(target)
            if j is None or j > i:
                raise TocError(f"hardlink {path_of(i)!r} does not point at an earlier regular file")
