"""``oci-archive:``: an OCI layout packed in a plain tar file (as skopeo writes it).

Reading does not extract: the tar's member table is read once and each blob is
served straight from its byte range in the archive, verified like layout blobs.
Only the names a layout defines are ever looked up, so odd members (``..``, links,
devices) cannot make us write anywhere.

Writing packs the blobs reachable from ``index.json`` (not stray files) into a
reproducible tar: fixed order (``oci-layout``, ``index.json``, ``blobs/``,
``blobs/<alg>/``, blobs sorted by name), mtime 0, uid/gid 0, no user/group names,
modes 0644/0755, PAX format (extended headers only when a size needs them).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from . import media_types as mt
from .errors import BlobNotFoundError, ImageNotFoundError, InvalidImageError
from .layout import (
    MAX_MANIFEST_SIZE,
    BlobSource,
    OciLayout,
    VerifiedReader,
    read_blob,
    read_verified,
)
from .model import Descriptor, Index, Manifest, parse_digest

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["OciArchive", "extracted_archive", "reachable_blobs", "write_archive"]


class _Section(io.RawIOBase):
    """Reads ``size`` bytes of a file from ``offset`` (one tar member's data)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = path.open("rb")
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        n = self._f.readinto(view[: min(len(view), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class OciArchive:
    """Read access to an ``oci-archive`` tar, with the same interface as a layout."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ImageNotFoundError(f"{self.path}: no such OCI archive")
        with self.path.open("rb") as f:
            head = f.read(4)
        if head.startswith(b"\x1f\x8b") or head.startswith(b"\x28\xb5\x2f\xfd"):
            raise InvalidImageError(
                f"{self.path}: compressed tar; oci-archive must be a plain tar "
                "(decompress it first)"
            )
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(self.path, "r:") as tf:
                for info in tf:
                    if info.isreg() and not info.issparse():
                        name = os.path.normpath(info.name).lstrip("/")
                        self._members[name] = info
        except tarfile.TarError as exc:
            raise InvalidImageError(f"{self.path}: not a readable tar archive: {exc}") from None
        if "oci-layout" not in self._members:
            raise InvalidImageError(f"{self.path}: not an OCI archive (no 'oci-layout' member)")

    def _open_member(self, name: str) -> BinaryIO:
        info = self._members[name]
        return cast(BinaryIO, _Section(self.path, info.offset_data, info.size))

    def read_index(self) -> Index:
        info = self._members.get("index.json")
        if info is None:
            raise InvalidImageError(f"{self.path}: OCI archive without index.json")
        if info.size > MAX_MANIFEST_SIZE:
            raise InvalidImageError(f"{self.path}: index.json larger than {MAX_MANIFEST_SIZE}")
        with self._open_member("index.json") as f:
            return Index.from_json(f.read())

    def _blob_name(self, digest: str) -> str:
        alg, hexpart = parse_digest(digest)
        return f"blobs/{alg}/{hexpart}"

    def has_blob(self, digest: str) -> bool:
        return self._blob_name(digest) in self._members

    def open_blob(self, desc: Descriptor) -> VerifiedReader:
        name = self._blob_name(desc.digest)
        if name not in self._members:
            raise BlobNotFoundError(
                f"{self.path}: blob {desc.digest} ({desc.media_type}) is missing"
            )
        return read_verified(self._open_member(name), desc.digest, desc.size, what=desc.media_type)

    def tags(self) -> list[str]:
        return sorted({d.ref_name for d in self.read_index().manifests if d.ref_name})


def reachable_blobs(source: BlobSource, index: Index | None = None) -> list[Descriptor]:
    """Every blob reachable from ``index`` (default: the source's ``index.json``).

    Nested indexes and manifests are followed; foreign layers (with ``urls``) that
    the source does not hold are skipped, as registries do.
    """
    seen: dict[str, Descriptor] = {}
    stack = list((index or source.read_index()).manifests)
    while stack:
        desc = stack.pop()
        if desc.digest in seen:
            continue
        if desc.urls and not source.has_blob(desc.digest):
            continue
        seen[desc.digest] = desc
        if desc.media_type in mt.INDEX_TYPES:
            body = read_blob(source, desc, max_size=MAX_MANIFEST_SIZE)
            stack.extend(Index.from_json(body, desc.media_type).manifests)
        elif desc.media_type in mt.MANIFEST_TYPES:
            body = read_blob(source, desc, max_size=MAX_MANIFEST_SIZE)
            manifest = Manifest.from_json(body, desc.media_type)
            stack.append(manifest.config)
            stack.extend(manifest.layers)
        elif not source.has_blob(desc.digest):
            raise BlobNotFoundError(f"blob {desc.digest} ({desc.media_type}) is missing")
    return sorted(seen.values(), key=lambda d: d.digest)


def _tarinfo(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(layout: OciLayout, dest: Path | str) -> None:
    """Pack ``layout`` into the tar ``dest`` reproducibly (atomic replace)."""
    dest = Path(dest)
    index_bytes = (layout.path / "index.json").read_bytes()
    layout_bytes = (layout.path / "oci-layout").read_bytes()
    blobs = reachable_blobs(layout, Index.from_json(index_bytes))
    for desc in blobs:  # check everything up front: no half-written archive on error
        if not layout.has_blob(desc.digest):
            raise BlobNotFoundError(f"{layout.path}: blob {desc.digest} is missing")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-archive-", dir=dest.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf,
        ):
            for name, data in (("oci-layout", layout_bytes), ("index.json", index_bytes)):
                tf.addfile(_tarinfo(name, len(data)), _BytesReader(data))
            tf.addfile(_tarinfo("blobs", directory=True))
            for alg in sorted({parse_digest(d.digest)[0] for d in blobs}):
                tf.addfile(_tarinfo(f"blobs/{alg}", directory=True))
            for desc in sorted(blobs, key=lambda d: d.digest):
                alg, hexpart = parse_digest(desc.digest)
                with layout.open_blob(desc) as blob:  # verified while packing
                    tf.addfile(_tarinfo(f"blobs/{alg}/{hexpart}", desc.size), blob)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        out, self._data = self._data[:n], self._data[n:]
        return bytes(out)


@contextlib.contextmanager
def extracted_archive(path: Path | str) -> Iterator[OciLayout]:
    """The archive unpacked into a temporary layout (for tools that need a directory)."""
    archive = OciArchive(path)
    with tempfile.TemporaryDirectory(prefix="chunkah-oci-") as tmp:
        layout = OciLayout.create(Path(tmp) / "layout")
        for desc in reachable_blobs(archive):
            with archive.open_blob(desc) as f:
                layout.write_blob(f, expected_digest=desc.digest)
        layout.write_index(archive.read_index())
        yield layout
