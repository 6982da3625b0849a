"""chunkah.compression: detection, streaming decompression, deterministic compression."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess

import pytest
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from chunkah import compression as comp
from chunkah.compression import BlobDigests, CompressingWriter, Compression, CompressionError


def sample(n: int = 3_000_000) -> bytes:
    # Compressible but not trivial: text with random bytes mixed in.
    rnd = os.urandom(n // 10)
    text = b"".join(b"line %d of some layer payload\n" % i for i in range(n // 30))
    return (text + rnd)[:n]


def compress(
    data: bytes, fmt: str, *, step: int = 65536, **kw: object
) -> tuple[bytes, BlobDigests]:
    out = io.BytesIO()
    w = CompressingWriter(out, fmt, **kw)  # type: ignore[arg-type]
    for i in range(0, len(data), step):
        w.write(data[i : i + step])
    digests = w.finish()
    return out.getvalue(), digests


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["none", "gzip", "zstd"])
def test_round_trip_and_digests(fmt: str) -> None:
    data = sample()
    blob, d = compress(data, fmt)
    assert d.diff_id == sha(data)
    assert d.digest == sha(blob)
    assert d.size == len(blob)
    assert d.uncompressed_size == len(data)
    assert d.compression == Compression(fmt)
    assert comp.open_decompressed(io.BytesIO(blob)).read() == data
    if fmt == "none":
        assert blob == data


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_system_tools_read_our_output(fmt: str) -> None:
    data = sample(500_000)
    blob, _ = compress(data, fmt)
    out = subprocess.run([fmt, "-dc"], input=blob, capture_output=True, check=True).stdout
    assert out == data
    subprocess.run([fmt, "-t"], input=blob, check=True, capture_output=True)


@pytest.mark.parametrize(
    ("fmt", "argv"),
    [
        ("gzip", ["gzip", "-c", "-6"]),
        ("gzip", ["gzip", "-c", "-1"]),
        ("zstd", ["zstd", "-c", "-q", "-3"]),
        ("zstd", ["zstd", "-c", "-q", "-19", "--long=27"]),
    ],
)
def test_reads_system_tool_output(fmt: str, argv: list[str]) -> None:
    data = sample(800_000)
    blob = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
    assert comp.detect_compression(blob[:4]) == Compression(fmt)
    assert comp.open_decompressed(io.BytesIO(blob)).read() == data


def test_gzip_header_is_fixed() -> None:
    blob, _ = compress(b"hello", "gzip")
    # magic, deflate, no flags (no name), mtime 0, xfl 0, OS unknown
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(blob) == b"hello"


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_output_is_independent_of_write_sizes(fmt: str) -> None:
    data = sample(2_000_000)
    a, _ = compress(data, fmt, step=1) if len(data) < 1000 else compress(data, fmt, step=4097)
    b, _ = compress(data, fmt, step=1 << 20)
    assert a == b


def test_zstd_output_identical_for_any_thread_count() -> None:
    # Enough data for several MT jobs (job size at level 3 is a few MiB).
    data = sample(24_000_000)
    blobs = {t: compress(data, "zstd", threads=t)[0] for t in (0, 1, 2, 4)}
    assert len({sha(b) for b in blobs.values()}) == 1
    # And libzstd's single-threaded engine really differs: that is why we never use it.
    single = zstandard.ZstdCompressor(level=3, threads=0, write_content_size=False)
    out = io.BytesIO()
    with single.stream_writer(out, closefd=False) as w:
        w.write(data)
    assert out.getvalue() != blobs[1]


def test_zstd_checksum_flag() -> None:
    data = b"x" * 100_000
    with_sum, _ = compress(data, "zstd", checksum=True)
    without, _ = compress(data, "zstd", checksum=False)
    assert zstandard.get_frame_parameters(with_sum).has_checksum
    assert not zstandard.get_frame_parameters(without).has_checksum


def test_zstd_frames_and_skippable_raw_data() -> None:
    out = io.BytesIO()
    w = CompressingWriter(out, "zstd")
    w.write(b"a" * 1000)
    first_end = w.end_frame()
    w.write(b"b" * 1000)
    second_end = w.end_frame()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"TOC!"
    w.write_raw(skippable)
    d = w.finish()
    blob = out.getvalue()
    assert 0 < first_end < second_end < len(blob)
    assert blob[second_end : second_end + len(skippable)] == skippable
    # Each frame decodes on its own: what chunked range fetches rely on.
    dctx = zstandard.ZstdDecompressor()
    assert dctx.decompressobj().decompress(blob[:first_end]) == b"a" * 1000
    assert dctx.decompressobj().decompress(blob[first_end:second_end]) == b"b" * 1000
    assert comp.open_decompressed(io.BytesIO(blob)).read() == b"a" * 1000 + b"b" * 1000
    assert d.diff_id == sha(b"a" * 1000 + b"b" * 1000)
    assert d.digest == sha(blob)


def test_stream_starting_with_skippable_frame_is_zstd() -> None:
    frame = b"\x5f\x2a\x4d\x18" + (2).to_bytes(4, "little") + b"hi"
    blob = frame + zstandard.ZstdCompressor().compress(b"payload")
    assert comp.detect_compression(blob[:4]) is Compression.ZSTD
    assert comp.open_decompressed(io.BytesIO(blob)).read() == b"payload"


def test_concatenated_gzip_members() -> None:
    blob = gzip.compress(b"one ") + gzip.compress(b"two")
    assert comp.open_decompressed(io.BytesIO(blob)).read() == b"one two"


def test_plain_input_and_short_input() -> None:
    assert comp.open_decompressed(io.BytesIO(b"")).read() == b""
    assert comp.open_decompressed(io.BytesIO(b"ab")).read() == b"ab"
    assert comp.open_decompressed(io.BytesIO(b"plain tar bytes")).read() == b"plain tar bytes"


class Trickle(io.RawIOBase):
    """A pipe-like source returning one byte per read."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if not self.data:
            return 0
        b[0] = self.data[0]
        self.data = self.data[1:]
        return 1


def test_magic_detected_through_short_reads() -> None:
    blob = zstandard.ZstdCompressor().compress(b"z" * 5000)
    assert comp.open_decompressed(Trickle(blob)).read() == b"z" * 5000  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_corrupt_and_truncated_streams_raise_compression_error(fmt: str) -> None:
    data = sample(300_000)
    blob, _ = compress(data, fmt)
    truncated = blob[: len(blob) // 2]
    with pytest.raises(CompressionError):
        comp.open_decompressed(io.BytesIO(truncated)).read()
    corrupt = bytearray(blob)
    for i in range(40, len(corrupt) - 20, 997):
        corrupt[i] ^= 0x5A
    with pytest.raises(CompressionError):
        comp.open_decompressed(io.BytesIO(bytes(corrupt))).read()


def test_zstd_truncation_at_every_cut_is_detected() -> None:
    blob, _ = compress(sample(400_000), "zstd")
    # (Under 4 bytes there is no magic: such a stream reads as plain data.)
    for cut in [4, 5, 9, 100, len(blob) // 3, len(blob) - 5, len(blob) - 1]:
        with pytest.raises(CompressionError):
            comp.open_decompressed(io.BytesIO(blob[:cut])).read()


def test_zstd_trailing_garbage_is_refused() -> None:
    blob, _ = compress(b"payload", "zstd")
    with pytest.raises(CompressionError):
        comp.open_decompressed(io.BytesIO(blob + b"junk")).read()


def test_zstd_window_limit_refuses_huge_windows() -> None:
    # zstd on a pipe cannot shrink the window to the input size: the header asks for 256 MiB.
    blob = subprocess.run(
        ["zstd", "-c", "-q", "--long=28"], input=b"a" * 1000, capture_output=True, check=True
    ).stdout
    assert zstandard.get_frame_parameters(blob).window_size == 1 << 28
    with pytest.raises(CompressionError, match="zstd"):
        comp.open_decompressed(io.BytesIO(blob)).read()
    # Raising the limit explicitly accepts it.
    assert comp.open_decompressed(io.BytesIO(blob), max_window_size=1 << 28).read() == b"a" * 1000


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_limit_stops_decompression_bombs(fmt: str) -> None:
    blob, _ = compress(b"\0" * 5_000_000, fmt)
    assert len(blob) < 100_000
    with pytest.raises(CompressionError, match="more than"):
        comp.open_decompressed(io.BytesIO(blob), limit=1_000_000).read()


def test_unsupported_media_types_and_names() -> None:
    with pytest.raises(CompressionError, match="not supported"):
        comp.open_decompressed(
            io.BytesIO(b"x"), "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        )
    with pytest.raises(CompressionError, match="unknown compression"):
        CompressingWriter(io.BytesIO(), "bzip2")
    with pytest.raises(CompressionError, match="level"):
        CompressingWriter(io.BytesIO(), "gzip", level=12)


def test_magic_wins_over_declared_media_type() -> None:
    # Registries serve "tar+gzip" layers that are plain tar; every tool trusts the bytes.
    stream = comp.open_decompressed(
        io.BytesIO(b"plain"), "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    assert stream.read() == b"plain"


def test_compress_stream_helper() -> None:
    data = sample(200_000)
    out = io.BytesIO()
    d = comp.compress_stream(io.BytesIO(data), out, "gzip", level=1)
    assert d.diff_id == sha(data) and d.digest == sha(out.getvalue())


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=20_000), st.sampled_from(["none", "gzip", "zstd"]))
def test_round_trip_property(data: bytes, fmt: str) -> None:
    # Uncompressed data that happens to start with a magic number is read as that
    # format; a real tar never does (its first bytes are a file name).
    assume(fmt != "none" or comp.detect_compression(data[:4]) is Compression.NONE)
    blob, d = compress(data, fmt, step=333)
    assert comp.open_decompressed(io.BytesIO(blob)).read() == data
    assert d.diff_id == sha(data)
    assert compress(data, fmt, step=5000)[0] == blob
