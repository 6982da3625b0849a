"""Hypothesis fuzzing of every parser that reads bytes an attacker may control.

TOC frames and bodies, tar streams (plain and zstd), the multipart/byteranges parser
and Content-Range values, registry and transport references, manifests, indexes and
image configs, and the package databases (dpkg, rpm, alpm, apk, Python RECORD):
whatever the input, the only exceptions are the project's own (``ChunkahError`` and
the registry client's ``MultipartError``, which the fetcher turns into a fallback).

Inputs are mutations of valid documents (so the fuzzer gets past the first check)
as well as arbitrary bytes.  ``CHUNKAH_FUZZ=long`` (``make fuzz``) runs 10 000
examples per parser; the default profile runs a few dozen, inside ``make test``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_owners_fuzz import _dpkg_lines, _headers, _text

from chunkah import oci
from chunkah.errors import ChunkahError
from chunkah.format.toc import (
    CdcSettings,
    TocBuilder,
    decode_toc_frame,
    encode_body,
    encode_toc_frame,
    parse_body,
)
from chunkah.oci.reference import parse_reference
from chunkah.owners import DatabaseError
from chunkah.owners.alpm import parse_alpm_sections, parse_mtree
from chunkah.owners.apk import parse_installed
from chunkah.owners.dpkg import parse_control_stanzas
from chunkah.owners.python_dist import parse_record
from chunkah.owners.rpm import package_from_header
from chunkah.owners.rpmheader import HeaderError
from chunkah.registry.ranges import (
    MultipartByteRangesParser,
    MultipartError,
    Span,
    multipart_boundary,
    parse_content_range,
)
from chunkah.registry.reference import parse_registry_reference
from chunkah.tree.tar_reader import iter_tar_members

settings.register_profile(
    "short", max_examples=40, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck)
)
PROFILE = os.environ.get("CHUNKAH_FUZZ", "short")
FUZZ = settings(settings.get_profile(PROFILE))
OURS: tuple[type[BaseException], ...] = (ChunkahError, MultipartError, DatabaseError, HeaderError)


def only_our_errors() -> contextlib.suppress:
    """Our own errors are the expected outcome of bad input; anything else fails the test."""
    return contextlib.suppress(*OURS)


def mutations(seed: bytes, *, max_edits: int = 6) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes flipped, inserted, deleted or truncated; or junk."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(0, max_edits))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("/"), ord(".")]))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            elif op == "delete" and data:
                del data[pos : pos + draw(st.integers(1, 16))]
            elif op == "truncate":
                del data[pos:]
        return bytes(data)

    return mutate() | st.binary(max_size=256)


# --- TOC ------------------------------------------------------------------------------


def _sample_toc() -> tuple[bytes, bytes]:
    b = TocBuilder(CdcSettings(16384, 65536, 262144))
    b.add_frame(0, 0, 100, 3072)
    b.add_frame(100, 3072, 50, 1024)
    b.add_entry(type_code=1, path=b"", mode=0o755, uid=0, gid=0, mtime=1, size=0)
    b.add_entry(type_code=1, path=b"etc", mode=0o755, uid=0, gid=0, mtime=1, size=0)
    c = b.add_chunk(512, 10, b"\x11" * 32, 7, 0)
    b.add_entry(type_code=0, path=b"etc/a", mode=0o644, uid=0, gid=0, mtime=1, size=10,
                first_chunk=c, n_chunks=1, payload_uoff=512, sha256=b"\x22" * 32,
                xattrs=(("user.x", b"1"),))  # fmt: skip
    b.add_entry(type_code=6, path=b"etc/b", mode=0o644, uid=0, gid=0, mtime=1, size=10,
                link=b"etc/a")  # fmt: skip
    b.add_entry(type_code=2, path=b"etc/c", mode=0o777, uid=0, gid=0, mtime=1, size=0,
                link=b"../x")  # fmt: skip
    toc = b.finish(4096, b"\x33" * 32)
    parse_body(encode_body(toc))  # the seed itself is valid
    frame, _ = encode_toc_frame(toc, level=1)
    return encode_body(toc), frame


TOC_BODY, TOC_FRAME = _sample_toc()


@FUZZ
@given(mutations(TOC_BODY, max_edits=4))
def test_toc_body(body: bytes) -> None:
    with only_our_errors():
        toc = parse_body(body)
        for entry in toc:  # decoding every entry must not fail either
            assert not entry.path.startswith(b"/")


@FUZZ
@given(mutations(TOC_FRAME, max_edits=3), st.integers(-5, 1 << 31), st.integers(0, 1 << 20))
def test_toc_frame(frame: bytes, body_size: int, offset: int) -> None:
    with only_our_errors():
        decode_toc_frame(frame, expected_digest=None, body_size=body_size, toc_offset=offset)


# --- tar --------------------------------------------------------------------------------


def _sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, link in [
            ("etc", tarfile.DIRTYPE, None, ""),
            ("etc/a", tarfile.REGTYPE, b"hello\n", ""),
            ("etc/b", tarfile.LNKTYPE, None, "etc/a"),
            ("etc/c", tarfile.SYMTYPE, None, "a"),
            ("etc/.wh.d", tarfile.REGTYPE, b"", ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.pax_headers = {"SCHILY.xattr.user.k": "v"} if name == "etc/a" else {}
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


TAR = _sample_tar()


@FUZZ
@given(mutations(TAR[:1536] + TAR[-1024:], max_edits=5) | mutations(TAR, max_edits=3))
def test_tar_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as spool, only_our_errors():
        for member in iter_tar_members(io.BytesIO(data), spool_dir=spool):
            assert b".." not in member.entry.path.split(b"/")
            assert b"\0" not in member.entry.path


@FUZZ
@given(mutations(TAR, max_edits=2))
def test_tar_reader_zstd(data: bytes) -> None:
    import zstandard

    blob = zstandard.ZstdCompressor(level=1).compress(data)
    with tempfile.TemporaryDirectory() as spool, only_our_errors():
        list(iter_tar_members(io.BytesIO(blob), spool_dir=spool))


# --- multipart/byteranges and Content-Range --------------------------------------------

SPANS = [Span(0, 5), Span(10, 13)]
BODY = (
    b"--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-4/100\r\n\r\n"
    b"abcde\r\n--B\r\nContent-Range: bytes 10-12/100\r\n\r\nxyz\r\n--B--\r\n"
)


@FUZZ
@given(mutations(BODY), st.lists(st.integers(1, 40), max_size=6))
def test_multipart_parser(body: bytes, cuts: list[int]) -> None:
    parser = MultipartByteRangesParser("B", SPANS, 100)
    with only_our_errors():
        got: dict[Span, bytes] = {}
        pos = 0
        for n in [*cuts, len(body)]:  # fed in arbitrary pieces, as a socket would
            for piece in parser.feed(body[pos : pos + n]):
                assert piece.span in SPANS
                got[piece.span] = got.get(piece.span, b"") + piece.data
                assert len(got[piece.span]) <= piece.span.length
            pos += n
        parser.close()
        # Spans that never came are the fetcher's to ask again (it verifies what came).
        if body == BODY:
            assert got == {SPANS[0]: b"abcde", SPANS[1]: b"xyz"}


@FUZZ
@given(st.text(max_size=60) | st.from_regex(r"bytes [0-9*]{1,4}-[0-9]{1,4}/[0-9*]{1,4}"))
def test_content_range(value: str) -> None:
    with only_our_errors():
        cr = parse_content_range(value)
        if cr.span is not None:
            assert cr.span.length > 0


@FUZZ
@given(st.text(max_size=80) | st.from_regex(r'multipart/byteranges; ?boundary="?[\w\\" ]{0,80}"?'))
def test_multipart_boundary(value: str) -> None:
    b = multipart_boundary(value)
    if b is not None:
        assert 0 < len(b) <= 70
        with only_our_errors():
            MultipartByteRangesParser(b, SPANS, 100)


# --- references ---------------------------------------------------------------------

_ref_parts = st.sampled_from(
    ["docker://", "oci:", "oci-archive:", "localhost", "127.0.0.1:5000", "/", ":", "@",
     "sha256:" + "a" * 64, "Repo", "repo", "_", "-", ".", "..", "tag", "%", "\x00", "é"]
)  # fmt: skip


@FUZZ
@given(st.lists(_ref_parts, max_size=10).map("".join) | st.text(max_size=60))
def test_references(text: str) -> None:
    with only_our_errors():
        ref = parse_registry_reference(text)
        assert ref.registry and ref.repository
    with only_our_errors():
        parse_reference(text)


# --- manifests, indexes, configs ---------------------------------------------------------

_DIGEST = "sha256:" + "b" * 64
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": _DIGEST, "size": 10},
        "layers": [
            {
                "mediaType": oci.OCI_LAYER_ZSTD,
                "digest": _DIGEST,
                "size": 5,
                "annotations": {"org.chunkah.toc.v1.position": "1:2:3"},
            }
        ],
    }
).encode()
INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": _DIGEST,
                "size": 3,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
).encode()
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [_DIGEST]},
        "config": {"Env": ["A=b"], "Labels": {"x": "y"}},
        "history": [{"created_by": "x"}],
    }
).encode()

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def _replace_values(doc: bytes) -> st.SearchStrategy[bytes]:
    """The document with one value somewhere replaced by arbitrary JSON."""

    @st.composite
    def go(draw: st.DrawFn) -> bytes:
        obj: Any = json.loads(doc)
        node = obj
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], dict | list) or draw(st.booleans()):
                node[key] = draw(_json_values)
                break
            node = node[key]
        return json.dumps(obj).encode()

    return go()


@pytest.mark.parametrize(
    ("seed", "parse"),
    [
        (MANIFEST, lambda b: oci.Manifest.from_json(b)),
        (INDEX, lambda b: oci.Index.from_json(b)),
        (CONFIG, lambda b: oci.ImageConfig.from_json(b)),
    ],
    ids=["manifest", "index", "config"],
)
@FUZZ
@given(data=st.data())
def test_documents(seed: bytes, parse: Callable[[bytes], Any], data: st.DataObject) -> None:
    doc = data.draw(_replace_values(seed) | mutations(seed, max_edits=3))
    with only_our_errors():
        parse(doc)


# --- package databases ---------------------------------------------------------------


@FUZZ
@given(_text(_dpkg_lines))
def test_dpkg(data: bytes) -> None:
    with only_our_errors():
        list(parse_control_stanzas(data, b"var/lib/dpkg/status"))


@FUZZ
@given(_headers() | st.binary(max_size=100))
def test_rpm(blob: bytes) -> None:
    with only_our_errors():
        package_from_header(blob)


@FUZZ
@given(_text(st.sampled_from([b"%NAME%", b"%FILES%", b"usr/bin/x", b"", b"/set type=file"])))
def test_alpm(data: bytes) -> None:
    with only_our_errors():
        parse_alpm_sections(data, b"desc")
    with only_our_errors():
        parse_mtree(data)


@FUZZ
@given(_text(st.sampled_from([b"P:a", b"o:b", b"F:usr/lib", b"R:x", b"Z:Q1AAAA", b"t:12", b""])))
def test_apk(data: bytes) -> None:
    with only_our_errors():
        parse_installed(data)


@FUZZ
@given(
    _text(st.sampled_from([b"a.py,sha256=" + b"A" * 43 + b",3", b"b,,", b"c,md5=AAAA,x", b'"q,']))
)
def test_record(data: bytes) -> None:
    with only_our_errors():
        parse_record(data, b"x.dist-info/RECORD")
