"""Images that attack the host updater, and the small benign image they start from.

``small_tree(root, version)`` makes a tiny OS-like tree (4 directories, 20 files of
incompressible bytes, 20 small config files; v2 changes a few hundred bytes in the
middle of every big file and some configs), so an update v1 -> v2 fetches a few
dozen separate ranges: the base of the crash, fault, full-disk and concurrency tests.

``tiny_tree(root)`` is the base of the hostile images; ``build_base(src, workdir)``
builds it with ``chunkah build`` into an OCI layout and returns a :class:`BaseImage`
(the layout's manifest, config, layer blob, TOC); the hostile variants are derived
from it.  ``corpus(base)`` returns the hostile
cases: each a :class:`HostileCase` with the blobs and manifest to push and the
error the update must end with.  ``push_case(client, ref, case)`` uploads it to a
real registry.  Nothing here runs an update: the tests do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from chunkah import oci
from chunkah.format.toc import (
    TYPE_FILE,
    TYPE_HARDLINK,
    TYPE_SYMLINK,
    Toc,
    decode_toc_frame,
    encode_body,
    encode_toc_frame,
)
from chunkah.format.writer import ANNOTATION_TOC_DIGEST, ANNOTATION_TOC_POSITION
from chunkah.oci import media_types as mt

EPOCH = 1_700_000_000
MTIME = EPOCH - 100  # below SOURCE_DATE_EPOCH: no clamp changes it


def small_tree(root: Path, version: int) -> Path:
    """The tiny two-version image (deterministic; every mtime ``MTIME``)."""
    rng = random.Random(7)
    for d in range(4):
        dd = root / f"usr/lib/d{d}"
        dd.mkdir(parents=True, exist_ok=True)
        for i in range(5):
            data = bytearray(rng.randbytes(rng.randint(100_000, 200_000)))
            if version == 2:
                mid = len(data) // 2
                data[mid : mid + 300] = random.Random(d * 10 + i).randbytes(300)
            (dd / f"f{i}.bin").write_bytes(data)
            tag = version if (d + i) % 3 == 0 else 1
            (dd / f"c{i}.txt").write_bytes(f"config {d} {i} v{tag}\n".encode() * 20)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text(f"ID=small\nVERSION_ID={version}\n")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (MTIME, MTIME), follow_symlinks=False)
    return root


def tiny_tree(root: Path, seed: int = 11) -> Path:
    """The base of the hostile images: two files big enough for several chunks, configs."""
    rng = random.Random(seed)
    (root / "usr/lib/app").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/app/big.bin").write_bytes(rng.randbytes(300_000))
    (root / "usr/lib/app/lib.so").write_bytes(rng.randbytes(90_000))
    for i in range(3):
        (root / f"usr/lib/app/c{i}.conf").write_bytes(b"key=%d\n" % i * 50)
    (root / "etc/os-release").write_text("ID=tiny\n")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (MTIME, MTIME), follow_symlinks=False)
    return root


async def push_case(client: Any, ref: str, case: HostileCase) -> None:
    """Upload the case's blobs and manifests to a real registry (``ref``: docker://HOST/REPO:TAG)."""
    for blob in case.blobs:
        await client.upload_blob(ref, blob)
    for body, mtype in case.extra_manifests:
        await client.put_manifest(ref.rsplit(":", 1)[0] + "@" + _sha(body), body, mtype)
    await client.put_manifest(ref, case.manifest, case.media_type)


def chunkah(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m chunkah ARGS`` with SOURCE_DATE_EPOCH set; raises on failure if ``check``."""
    full = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"chunkah {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def update_cmd(ref: str, sysroot: Path, *extra: str) -> list[str]:
    return ["update", ref, "--sysroot", str(sysroot), "--plain-http", "--json", *extra]


# --- the base image, read back from its OCI layout ------------------------------------------


@dataclass
class BaseImage:
    """A valid one-layer chunkah image, taken apart so it can be re-assembled wrongly."""

    layout: Path
    manifest: oci.Manifest
    config: bytes
    layer: oci.Descriptor
    blob: bytes
    toc: Toc
    toc_offset: int

    @property
    def frames_end(self) -> int:
        return self.toc_offset


def build_base(src: Path, workdir: Path) -> BaseImage:
    """``chunkah build src --max-layers 1`` into ``workdir/base`` and read it back."""
    layout_dir = workdir / "base"
    chunkah("build", str(src), "-o", f"oci:{layout_dir}:base", "--max-layers", "1", "-q")
    layout = oci.OciLayout.open(layout_dir)
    (desc,) = [
        d
        for d in layout.read_index().manifests
        if d.annotations.get(oci.ANNOTATION_REF_NAME) == "base"
    ]
    manifest = oci.Manifest.from_json(layout.blob_path(desc.digest).read_bytes())
    (layer,) = manifest.layers
    blob = layout.blob_path(layer.digest).read_bytes()
    offset, length, body = (int(x) for x in layer.annotations[ANNOTATION_TOC_POSITION].split(":"))
    toc = decode_toc_frame(
        blob[offset : offset + length],
        expected_digest=layer.annotations[ANNOTATION_TOC_DIGEST],
        body_size=body,
        toc_offset=offset,
    )
    config = layout.blob_path(manifest.config.digest).read_bytes()
    return BaseImage(layout_dir, manifest, config, layer, blob, toc, offset)


# --- hostile cases ---------------------------------------------------------------------------


@dataclass
class HostileCase:
    """One crafted image: what to push, and how the update must fail."""

    name: str
    threat: str  # the line of docs/security.md it covers
    blobs: list[bytes]  # every blob to upload (config and layers)
    manifest: bytes  # the manifest (or index) pushed under the tag
    media_type: str
    error: type[Exception]  # the chunkah error class the update must raise
    message: str  # a regular expression the error message must match
    exit_code: int
    extra_manifests: list[tuple[bytes, str]] = field(default_factory=list)  # pushed by digest first
    # A registry would not store it: a proxy answers every manifest request with this.
    served_manifest: bytes | None = None
    ok: bool = False  # not an attack that must fail: deployed, and contained in the tree


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)


def _config(diff_ids: list[str], base: BaseImage) -> bytes:
    doc = json.loads(base.config)
    doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    doc["history"] = [{"created_by": "hostile"} for _ in diff_ids]
    return oci.canonical_json(doc)


def _image(
    name: str,
    threat: str,
    layers: list[tuple[bytes, str, dict[str, str], str]],
    error: type[Exception],
    message: str,
    exit_code: int,
    base: BaseImage,
) -> HostileCase:
    """layers: (blob, media type, annotations, diff_id)."""
    config = _config([d for *_, d in layers], base)
    descs = [
        oci.Descriptor(mtype, _sha(blob), len(blob), annotations=ann)
        for blob, mtype, ann, _ in layers
    ]
    cdesc = oci.Descriptor(mt.OCI_CONFIG, _sha(config), len(config))
    manifest = oci.Manifest(cdesc, tuple(descs)).to_json()
    return HostileCase(
        name, threat, [config, *(b for b, *_ in layers)], manifest, mt.OCI_MANIFEST,
        error, message, exit_code,
    )  # fmt: skip


# -- plain tar layers (the tar reader and the planner are the defence) --


def _tar(
    members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            info.mtime = MTIME
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _ti(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _raw_tar_member(name: bytes, data: bytes, kind: bytes = b"0", link: bytes = b"") -> bytes:
    """One ustar member with a name written byte for byte (NUL, odd encodings)."""
    hdr = bytearray(512)
    hdr[0 : len(name[:100])] = name[:100]
    hdr[100:108] = b"0000644\0"
    hdr[108:116] = b"0000000\0"
    hdr[116:124] = b"0000000\0"
    hdr[124:136] = b"%011o\0" % len(data)
    hdr[136:148] = b"%011o\0" % MTIME
    hdr[148:156] = b" " * 8
    hdr[156:157] = kind
    hdr[157 : 157 + len(link[:100])] = link[:100]
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    pad = (-len(data)) % 512
    return bytes(hdr) + data + bytes(pad)


def _plain_layer(
    tar: bytes, name: str, threat: str, error: type[Exception], message: str, code: int,
    base: BaseImage, *, diff_id: str | None = None,
) -> HostileCase:  # fmt: skip
    blob = _zstd(tar)
    return _image(
        name, threat, [(blob, mt.OCI_LAYER_ZSTD, {}, diff_id or _sha(tar))],
        error, message, code, base,
    )  # fmt: skip


def _base_dirs() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (_ti(".", tarfile.DIRTYPE), None),
        (_ti("etc", tarfile.DIRTYPE), None),
        (_ti("usr", tarfile.DIRTYPE), None),
    ]


# -- chunkah layers whose TOC lies (the TOC reader and the fetcher are the defence) --


def _with_toc(
    base: BaseImage,
    mutate: Callable[[Toc], Toc],
    *,
    body_override: bytes | None = None,
    declared_body: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The base blob with its TOC replaced by ``mutate(toc)``, annotations to match."""
    toc = mutate(_copy_toc(base.toc))
    if body_override is not None:
        comp = _zstd(body_override)
        frame = struct.pack("<II", 0x184D2A5C, len(comp)) + comp
        body_size = len(body_override) if declared_body is None else declared_body
    else:
        frame, body_size = encode_toc_frame(toc)
    blob = base.blob[: base.toc_offset] + frame
    ann = dict(base.layer.annotations)
    ann[ANNOTATION_TOC_DIGEST] = _sha(frame)
    ann[ANNOTATION_TOC_POSITION] = f"{base.toc_offset}:{len(frame)}:{body_size}"
    return blob, ann


def _copy_toc(toc: Toc) -> Toc:
    return replace(
        toc, frames=toc.frames.copy(), chunks=toc.chunks.copy(), entries=toc.entries.copy()
    )


def _entry(toc: Toc, path: bytes) -> int:
    return next(i for i in range(len(toc.entries)) if toc.path(i) == path)


def _first_file(toc: Toc) -> int:
    types = toc.entries["type"]
    sizes = toc.entries["size"]
    return int(np.flatnonzero((types == TYPE_FILE) & (sizes > 0))[0])


def _chunkah_case(
    base: BaseImage, name: str, threat: str, mutate: Callable[[Toc], Toc],
    error: type[Exception], message: str, code: int, *, body_override: bytes | None = None,
    ann_override: dict[str, str] | None = None, diff_id: str | None = None,
    declared_body: int | None = None,
) -> HostileCase:  # fmt: skip
    blob, ann = _with_toc(base, mutate, body_override=body_override, declared_body=declared_body)
    ann.update(ann_override or {})
    did = diff_id or base.toc.diff_id_digest
    return _image(
        name, threat, [(blob, base.layer.media_type, ann, did)], error, message, code, base
    )


def _rename_path(toc: Toc, index: int, new: bytes) -> Toc:
    """Give entry ``index`` the path ``new`` (appended to the strings)."""
    e = toc.entries
    old_off, plen, llen = (
        int(e[index]["path_off"]),
        int(e[index]["path_len"]),
        int(e[index]["link_len"]),
    )
    link = toc.strings[old_off + plen : old_off + plen + llen]
    e[index]["path_off"] = len(toc.strings)
    e[index]["path_len"] = len(new)
    return replace(toc, strings=toc.strings + new + link)


def _set_link(toc: Toc, index: int, link: bytes, type_code: int) -> Toc:
    e = toc.entries
    off, plen = int(e[index]["path_off"]), int(e[index]["path_len"])
    path = toc.strings[off : off + plen]
    e[index]["path_off"] = len(toc.strings)
    e[index]["link_len"] = len(link)
    e[index]["type"] = type_code
    e[index]["size"] = 0 if type_code == TYPE_SYMLINK else e[index]["size"]
    if type_code != TYPE_FILE:
        e[index]["n_chunks"] = 0
        e[index]["first_chunk"] = 0
        e[index]["payload_uoff"] = 0
        if type_code == TYPE_SYMLINK:
            e[index]["sha256"] = bytes(32)
    return replace(toc, strings=toc.strings + path + link)


CASE_NAMES = (
    "tar-dotdot", "tar-dotdot-deep", "tar-a-dotdot-b", "tar-dotdot-only", "tar-absolute",
    "symlink-parent", "symlink-chain", "symlink-dotdot-chain", "hardlink-dotdot",
    "hardlink-absolute", "hardlink-to-symlink", "device-node", "name-nul-pax",
    "symlink-target-nul", "name-nul-ustar", "name-odd-encoding", "duplicate-path",
    "plain-diff-id", "zstd-lying-size", "zstd-ratio-bomb", "toc-overlapping-frames",
    "toc-frames-past-blob", "toc-wrong-file-size", "toc-wrong-chunk-digest",
    "toc-wrong-file-digest", "toc-chunks-short", "toc-chunk-bad-frame", "toc-path-traversal",
    "toc-absolute-path", "toc-duplicate-path", "toc-hardlink-outside", "toc-symlink-parent",
    "toc-device-node", "toc-digest-mismatch", "toc-diff-id-mismatch", "toc-forged-diff-id",
    "toc-oversized-claim", "toc-body-bomb", "toc-giant-frame", "manifest-oversized", "config-oversized",
    "index-too-deep", "index-loop", "layer-unknown-media-type", "config-diff-ids-short",
    "config-unknown-media-type", "manifest-unknown-media-type", "tar-no-root-entry",
)  # fmt: skip


def corpus(base: BaseImage) -> list[HostileCase]:
    """Every hostile case (at least 30), each with the error it must produce."""
    from chunkah.errors import InputError, VerificationError
    from chunkah.format.toc import TocError
    from chunkah.host.plan import PlanError

    cases: list[HostileCase] = []
    add = cases.append
    tree_error = InputError  # the tar reader's rules (chunkah.tree.tar_reader)

    # Plain tar layers: tar path traversal and absolute paths.
    for name, path in [
        ("tar-dotdot", "../escape"),
        ("tar-dotdot-deep", "usr/../../escape"),
        ("tar-a-dotdot-b", "a/../../b"),
        ("tar-dotdot-only", ".."),
    ]:
        tar = _tar([*_base_dirs(), (_ti(path), b"pwned\n")])
        add(_plain_layer(tar, name, "tar path traversal", tree_error, r"\.\.", 2, base))
    tar = _tar([*_base_dirs(), (_ti("/etc/passwd-abs"), b"root::0:0::/:/bin/sh\n")])
    # An absolute name is made relative (as tar does); it stays inside the tree.
    add(_plain_layer(tar, "tar-absolute", "absolute paths", type(None), "", 0, base))

    # Symlink chains that escape, writes through a symlinked parent.
    tar = _tar([
        *_base_dirs(),
        (_ti("usr/evil", tarfile.SYMTYPE, linkname="../../../../../tmp"), None),
        (_ti("usr/evil/dropped"), b"through the link\n"),
    ])  # fmt: skip
    add(
        _plain_layer(
            tar,
            "symlink-parent",
            "symlink escape (write through a link)",
            PlanError,
            r"symlink",
            4,
            base,
        )
    )
    tar = _tar([
        *_base_dirs(),
        (_ti("usr/l1", tarfile.SYMTYPE, linkname="l2"), None),
        (_ti("usr/l2", tarfile.SYMTYPE, linkname="/"), None),
        (_ti("usr/l1/etc", tarfile.DIRTYPE), None),
        (_ti("usr/l1/etc/shadow"), b"x\n"),
    ])  # fmt: skip
    add(_plain_layer(tar, "symlink-chain", "symlink chain to /", PlanError, r"symlink", 4, base))
    tar = _tar([
        *_base_dirs(),
        (_ti("usr/up", tarfile.SYMTYPE, linkname=".."), None),
        (_ti("usr/up/up2", tarfile.SYMTYPE, linkname=".."), None),
        (_ti("usr/up/up2/x"), b"x\n"),
    ])  # fmt: skip
    add(
        _plain_layer(
            tar, "symlink-dotdot-chain", "symlink chain up the tree", PlanError, r"symlink", 4, base
        )
    )

    # Hardlinks outside the tree, to nothing, to a non-file.
    tar = _tar([*_base_dirs(), (_ti("usr/hl", tarfile.LNKTYPE, linkname="../../etc/shadow"), None)])
    add(
        _plain_layer(
            tar, "hardlink-dotdot", "hardlink outside the tree", tree_error, r"\.\.", 2, base
        )
    )
    tar = _tar([*_base_dirs(), (_ti("usr/hl", tarfile.LNKTYPE, linkname="/etc/shadow"), None)])
    add(
        _plain_layer(
            tar, "hardlink-absolute", "hardlink to a host path", PlanError, r"hardlink", 4, base
        )
    )
    tar = _tar([
        *_base_dirs(),
        (_ti("usr/s", tarfile.SYMTYPE, linkname="/etc/shadow"), None),
        (_ti("usr/hl", tarfile.LNKTYPE, linkname="usr/s"), None),
    ])  # fmt: skip
    add(
        _plain_layer(
            tar, "hardlink-to-symlink", "hardlink to a non-file", PlanError, r"hardlink", 4, base
        )
    )

    # A device node of the host's hardware (a disk).
    # (documented: devices are deployed as root; here the node's major/minor are absurd)
    tar = _tar([*_base_dirs(), (_ti("usr/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)])
    add(_plain_layer(tar, "device-node", "device nodes", VerificationError, r"device", 4, base))

    # NUL bytes and odd encodings in names, duplicate paths.
    nul = _ti("usr/nul")
    nul.pax_headers = {"path": "usr/a\x00b"}
    tar = _tar([*_base_dirs(), (nul, b"nul\n")])
    add(_plain_layer(tar, "name-nul-pax", "NUL in a name (PAX)", tree_error, r"NUL|\.\.", 2, base))
    link = _ti("usr/nul-link", tarfile.SYMTYPE)
    link.pax_headers = {"linkpath": "/etc\x00/shadow"}
    tar = _tar([*_base_dirs(), (link, None)])
    add(
        _plain_layer(
            tar, "symlink-target-nul", "NUL in a symlink target", tree_error, r"NUL", 2, base
        )
    )
    raw = _raw_tar_member(b"usr/b\0/../../x", b"nul\n") + bytes(1024)
    tar = _tar(_base_dirs())[:-1024] + raw
    # A NUL ends a ustar name field: the entry is "usr/b", inside the tree (as tar reads it).
    add(_plain_layer(tar, "name-nul-ustar", "NUL in a name (ustar)", type(None), "", 0, base))
    raw = _raw_tar_member(b"usr/\xff\xfe-latin1-\xe9", b"odd\n") + bytes(1024)
    tar = _tar(_base_dirs())[:-1024] + raw
    # Odd bytes are legal names on Linux: deployed byte for byte, inside the tree.
    add(_plain_layer(tar, "name-odd-encoding", "odd encodings in names", type(None), "", 0, base))
    tar = _tar([*_base_dirs(), (_ti("usr/dup"), b"first\n"), (_ti("usr/dup"), b"second\n")])
    add(_plain_layer(tar, "duplicate-path", "duplicate paths", type(None), "", 0, base))

    # diff_id mismatch on a plain layer.
    tar = _tar([*_base_dirs(), (_ti("usr/f"), b"data\n")])
    add(_plain_layer(tar, "plain-diff-id", "diff_id mismatch", VerificationError, r"diff_id", 4, base,
                     diff_id=_sha(b"something else")))  # fmt: skip

    # zstd bombs in a plain layer: a frame that lies about its content size,
    # and one that expands more than 1000:1
    tar = _tar([*_base_dirs(), (_ti("usr/f"), b"a" * 5000)])
    # Frame_Content_Size is the last header field: claim 16 bytes for ~7 KB.
    blob = _zstd_lying_size(tar)
    add(_image("zstd-lying-size", "zstd bomb (declared content size lies)",
               [(blob, mt.OCI_LAYER_ZSTD, {}, _sha(tar))], InputError, r"zstd|size|corrupt", 2, base))  # fmt: skip
    add(_image("zstd-ratio-bomb", "zstd bomb (ratio > 1000:1)",
               [(_zeros_bomb(96 << 20), mt.OCI_LAYER_ZSTD, {}, _sha(b"not the tar"))],
               InputError, r"decompresses to more than", 2, base))  # fmt: skip

    # chunkah layers whose TOC lies.
    def overlap(t: Toc) -> Toc:
        t.frames[1]["coff"] = t.frames[0]["coff"]
        return t

    add(_chunkah_case(base, "toc-overlapping-frames", "TOC: overlapping offsets", overlap,
                      TocError, r"contiguous", 4))  # fmt: skip

    def past_blob(t: Toc) -> Toc:
        t.frames[-1]["csize"] += 10_000_000
        return t

    add(_chunkah_case(base, "toc-frames-past-blob", "TOC: out-of-blob offsets", past_blob,
                      TocError, r"past the TOC", 4))  # fmt: skip

    def wrong_size(t: Toc) -> Toc:
        i = _first_file(t)
        t.entries[i]["size"] += 1
        return t

    add(_chunkah_case(base, "toc-wrong-file-size", "TOC: wrong sizes", wrong_size,
                      TocError, r"cover|outside", 4))  # fmt: skip

    def wrong_chunk_digest(t: Toc) -> Toc:
        c = int(t.entries[_entry(t, b"usr/lib/app/big.bin")]["first_chunk"])
        t.chunks[c]["sha256"] = hashlib.sha256(b"lie").digest()
        return t

    add(_chunkah_case(base, "toc-wrong-chunk-digest", "TOC: wrong digests (chunk)", wrong_chunk_digest,
                      VerificationError, r"do not match the chunk digests|failed verification", 4))  # fmt: skip

    def wrong_file_digest(t: Toc) -> Toc:
        t.entries[_first_file(t)]["sha256"] = hashlib.sha256(b"lie").digest()
        return t

    add(_chunkah_case(base, "toc-wrong-file-digest", "TOC: wrong digests (file)", wrong_file_digest,
                      VerificationError, r"does not match its sha256", 4))  # fmt: skip

    def short_cover(t: Toc) -> Toc:
        i = _first_file(t)
        c = int(t.entries[i]["first_chunk"]) + int(t.entries[i]["n_chunks"]) - 1
        t.chunks[c]["usize"] -= 1
        return t

    add(_chunkah_case(base, "toc-chunks-short", "TOC: chunk lists not covering the file", short_cover,
                      TocError, r"cover|contiguous|start", 4))  # fmt: skip

    def chunk_outside_frame(t: Toc) -> Toc:
        c = int(t.entries[_first_file(t)]["first_chunk"])
        t.chunks[c]["frame"] = len(t.frames) + 5
        return t

    add(_chunkah_case(base, "toc-chunk-bad-frame", "TOC: chunk in a frame that does not exist",
                      chunk_outside_frame, TocError, r"frame", 4))  # fmt: skip

    def toc_traversal(t: Toc) -> Toc:
        return _rename_path(t, _first_file(t), b"usr/../../etc/evil")

    add(_chunkah_case(base, "toc-path-traversal", "TOC: path traversal", toc_traversal,
                      TocError, r"unsafe|non-normal|order", 4))  # fmt: skip

    def toc_absolute(t: Toc) -> Toc:
        return _rename_path(t, _first_file(t), b"/etc/evil")

    add(_chunkah_case(base, "toc-absolute-path", "TOC: absolute path", toc_absolute,
                      TocError, r"unsafe|non-normal|order", 4))  # fmt: skip

    def toc_duplicate(t: Toc) -> Toc:
        return _rename_path(t, _entry(t, b"usr/lib/app/c1.conf"), b"usr/lib/app/c0.conf")

    add(_chunkah_case(base, "toc-duplicate-path", "TOC: duplicate paths", toc_duplicate,
                      TocError, r"duplicated|order", 4))  # fmt: skip

    def toc_hardlink_out(t: Toc) -> Toc:
        return _set_link(t, _entry(t, b"usr/lib/app/c1.conf"), b"../../etc/shadow", TYPE_HARDLINK)

    add(_chunkah_case(base, "toc-hardlink-outside", "TOC: hardlink outside the tree", toc_hardlink_out,
                      TocError, r"hardlink|cover|size|chunks", 4))  # fmt: skip

    def toc_symlink_parent(t: Toc) -> Toc:
        # A directory of the image becomes a symlink to /: its files would be written there.
        types = t.entries["type"].tolist()
        d = next(i for i, ty in enumerate(types) if ty == 1 and t.path(i) == b"usr/lib/app")
        return _set_link(t, d, b"/", TYPE_SYMLINK)

    add(_chunkah_case(base, "toc-symlink-parent", "TOC: symlink escape (parent is a link)",
                      toc_symlink_parent, PlanError, r"symlink", 4))  # fmt: skip

    def toc_device(t: Toc) -> Toc:
        i = _entry(t, b"usr/lib/app/c2.conf")  # a small config file becomes /dev/sda's twin
        t.entries[i]["type"] = 4
        t.entries[i]["dev_major"], t.entries[i]["dev_minor"] = 8, 0
        t.entries[i]["size"] = 0
        t.entries[i]["n_chunks"] = 0
        t.entries[i]["first_chunk"] = 0
        t.entries[i]["payload_uoff"] = 0
        t.entries[i]["sha256"] = bytes(32)
        return t

    add(_chunkah_case(base, "toc-device-node", "TOC: device nodes", toc_device,
                      VerificationError, r"device|diff_id", 4))  # fmt: skip

    add(_chunkah_case(base, "toc-digest-mismatch", "TOC digest mismatch", lambda t: t,
                      TocError, r"TOC digest mismatch", 4,
                      ann_override={ANNOTATION_TOC_DIGEST: _sha(b"another TOC")}))  # fmt: skip
    add(_chunkah_case(base, "toc-diff-id-mismatch", "diff_id mismatch (TOC vs config)", lambda t: t,
                      VerificationError, r"diff_id", 4, diff_id=_sha(b"other tar")))  # fmt: skip

    def tar_diff_id_lie(t: Toc) -> Toc:
        # TOC and config agree, but neither is the tar the frames hold.
        return replace(t, diff_id=hashlib.sha256(b"forged").digest())

    add(_chunkah_case(base, "toc-forged-diff-id", "diff_id mismatch (tar regenerated)", tar_diff_id_lie,
                      VerificationError, r"diff_id", 4,
                      diff_id="sha256:" + hashlib.sha256(b"forged").hexdigest()))  # fmt: skip

    # Oversized TOCs: a body size above the limit, a body that inflates past its claim.
    add(_chunkah_case(base, "toc-oversized-claim", "oversized TOC (declared)", lambda t: t,
                      TocError, r"out of range|does not fit", 4,
                      ann_override={ANNOTATION_TOC_POSITION: f"{base.toc_offset}:9999:{(1 << 30) + 1}"}))  # fmt: skip
    toc_body = encode_body(base.toc)
    add(_chunkah_case(base, "toc-body-bomb", "oversized TOC (a TOC frame that inflates past its size)",
                      lambda t: t, TocError, r"does not decompress", 4,
                      body_override=toc_body + bytes(200 << 20), declared_body=len(toc_body)))  # fmt: skip

    def giant_frame(t: Toc) -> Toc:
        # A consistent TOC whose last frame (tar padding) claims 4 GiB: honest about
        # its size, and a 4 GiB allocation if it were believed.
        t.frames[-1]["usize"] = 0xFFFF0000
        last = t.frames[-1]
        return replace(t, tar_size=int(last["uoff"]) + int(last["usize"]))

    add(_chunkah_case(base, "toc-giant-frame", "zstd bomb (a 4 GiB frame in a TOC)", giant_frame,
                      TocError, r"more than \d+ bytes", 4))  # fmt: skip

    # Documents: oversized manifest and config, indexes nested too deep or in a loop,
    # unknown media types.
    tar = _tar([*_base_dirs(), (_ti("usr/f"), b"data\n")])
    ok_layer = (_zstd(tar), mt.OCI_LAYER_ZSTD, {}, _sha(tar))
    plain = _image("x", "", [ok_layer], type(None), "", 0, base)
    huge = json.loads(plain.manifest)
    huge["annotations"] = {"padding": "x" * (5 << 20)}
    add(replace(plain, name="manifest-oversized", threat="oversized manifest",
                served_manifest=oci.canonical_json(huge), error=InputError, message=r"limit|large", exit_code=2))  # fmt: skip
    big_config = json.loads(_config([_sha(tar)], base))
    big_config["config"] = {"Labels": {"padding": "y" * (17 << 20)}}
    cfg = oci.canonical_json(big_config)
    man = oci.Manifest(
        oci.Descriptor(mt.OCI_CONFIG, _sha(cfg), len(cfg)),
        (oci.Descriptor(mt.OCI_LAYER_ZSTD, _sha(ok_layer[0]), len(ok_layer[0])),),
    ).to_json()
    add(replace(plain, name="config-oversized", threat="oversized config", blobs=[cfg, ok_layer[0]],
                manifest=man, error=InputError, message=r"limit|large|bytes", exit_code=2))  # fmt: skip
    # Nine indexes, each pointing at the next: deeper than anyone needs (limit 8).
    chain: list[tuple[bytes, str]] = [(plain.manifest, mt.OCI_MANIFEST)]
    for _ in range(9):
        child, ctype = chain[-1]
        idx = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [{"mediaType": ctype, "digest": _sha(child), "size": len(child),
                           "platform": {"os": "linux", "architecture": oci.host_platform().architecture}}],
        }  # fmt: skip
        chain.append((oci.canonical_json(idx), mt.OCI_INDEX))
    top, _ = chain.pop()
    add(replace(plain, name="index-too-deep", threat="index loops (depth)", manifest=top,
                media_type=mt.OCI_INDEX, extra_manifests=chain, error=InputError,
                message=r"nested too deeply", exit_code=2))  # fmt: skip
    # An index whose entry names a digest the registry answers with the index itself:
    # a loop only a lying registry can make; the digest check breaks it.
    loop = {
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_INDEX, "digest": _sha(b"the index itself"), "size": 300,
                       "platform": {"os": "linux", "architecture": oci.host_platform().architecture}}],
    }  # fmt: skip
    add(replace(plain, name="index-loop", threat="index loops (a registry serving one)",
                served_manifest=oci.canonical_json(loop),
                error=VerificationError, message=r"hashes to", exit_code=4))  # fmt: skip
    add(_image("layer-unknown-media-type", "unknown media types (layer)",
               [(ok_layer[0], "application/vnd.example.evil+zstd", {}, ok_layer[3])],
               InputError, r"media type|not supported|unsupported", 2, base))  # fmt: skip
    two = _image(
        "config-diff-ids-short",
        "config with fewer diff_ids than layers",
        [ok_layer, ok_layer],
        InputError,
        r"diff_ids for 2 layers",
        2,
        base,
    )
    two_config = _config([_sha(tar)], base)
    twoman = json.loads(two.manifest)
    twoman["config"] = oci.Descriptor(mt.OCI_CONFIG, _sha(two_config), len(two_config)).to_dict()
    add(replace(two, blobs=[two_config, ok_layer[0]], manifest=oci.canonical_json(twoman)))
    odd = json.loads(plain.manifest)
    odd["config"]["mediaType"] = "application/vnd.example.not-a-config+json"
    add(replace(plain, name="config-unknown-media-type", threat="unknown media types (config)",
                manifest=oci.canonical_json(odd), error=InputError, message=r"artifact", exit_code=2))  # fmt: skip
    odd = json.loads(plain.manifest)
    odd["mediaType"] = "application/vnd.example.manifest+json"
    add(replace(plain, name="manifest-unknown-media-type", threat="unknown media types (manifest)",
                served_manifest=oci.canonical_json(odd), error=InputError,
                message=r"not an image manifest|media type", exit_code=2))  # fmt: skip

    # Benign oddities: deployed, byte for byte, inside the tree.
    tar = _tar([(_ti("usr", tarfile.DIRTYPE), None), (_ti("usr/f"), b"data\n")])
    add(
        replace(
            _plain_layer(
                tar, "tar-no-root-entry", "foreign layer without ./", type(None), "", 0, base
            ),
            ok=True,
        )
    )
    for c in cases:
        if c.error is type(None):
            c.ok = True
    return cases


def _zeros_bomb(size: int) -> bytes:
    """A zstd tar layer holding one file of ``size`` zeros (compressed ~30 000:1), streamed."""
    head = _tar([*_base_dirs(), (_ti("usr/zeros", size=size), None)])[:-1024]
    # _tar wrote a header for a file with no payload; the payload follows it.
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    out = [cobj.compress(head)]
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(cobj.compress(block))
    out.append(cobj.compress(bytes(1024)))
    out.append(cobj.flush())
    return b"".join(out)


def _zstd_lying_size(data: bytes) -> bytes:
    """A zstd frame whose header declares 16 bytes of content while it holds ``data``."""
    frame = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data)
    # Frame header: magic(4) FHD(1) [window descriptor] ... ; rebuild with FCS=16.
    fhd = frame[4]
    single_segment = bool(fhd & 0x20)
    assert not single_segment and (fhd >> 6) == 0 and (fhd & 0x3) == 0
    new_fhd = (fhd & 0x3F) | 0x20  # single segment, FCS field 1 byte
    rest = frame[6:]  # drop the window descriptor (single segment has none)
    return frame[:4] + bytes([new_fhd, 16]) + rest
