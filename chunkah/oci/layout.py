"""OCI image layouts on disk: ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.

Every blob read through this module is verified: the stream raises
:class:`DigestMismatchError` when it reaches the end and the bytes do not hash to the
descriptor's digest, or as soon as there are more bytes than the descriptor's size.
Blobs are written to a temporary file in the layout root and renamed into place
once their digest is known, so a crash never leaves a half-written blob under a
valid name.  Concurrent writers to one layout are not coordinated (the last
``index.json`` written wins).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from . import media_types as mt
from .errors import (
    BlobNotFoundError,
    DigestMismatchError,
    ImageNotFoundError,
    InvalidImageError,
    OciError,
)
from .model import (
    ANNOTATION_REF_NAME,
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    parse_digest,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "BlobSource",
    "BlobWriter",
    "OciLayout",
    "VerifiedReader",
    "read_blob",
    "read_verified",
]

#: Manifests and indexes above this are refused (the distribution spec's usual limit).
MAX_MANIFEST_SIZE = 4 << 20
#: Configs carry history and can be larger than manifests, but not unboundedly.
MAX_CONFIG_SIZE = 16 << 20

_BUF = 1 << 20


class _VerifyingRaw(io.RawIOBase):
    """Hashes what passes through and checks it against a digest and size at EOF."""

    def __init__(
        self,
        source: BinaryIO,
        digest: str,
        size: int | None,
        *,
        what: str,
        closing: Iterable[Any] = (),
    ) -> None:
        alg, self._hex = parse_digest(digest)
        self._digest = digest
        self._hash = hashlib.new(alg)
        self._source = source
        self._size = size
        self._seen = 0
        self._what = what
        self._closing = list(closing)
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        if self.verified:
            return 0
        want = len(view)
        if self._size is not None:
            # Ask for one byte past the size so an overlong blob shows up.
            want = min(want, self._size - self._seen + 1)
        data = self._source.read(want) if want else b""
        n = len(data)
        if n:
            view[:n] = data
            self._hash.update(data)
            self._seen += n
            if self._size is not None and self._seen > self._size:
                raise DigestMismatchError(
                    f"{self._what} {self._digest}: more than the {self._size} bytes "
                    "its descriptor declares"
                )
            return n
        self._check()
        return 0

    def _check(self) -> None:
        if self._size is not None and self._seen != self._size:
            raise DigestMismatchError(
                f"{self._what} {self._digest}: {self._seen} bytes, descriptor says {self._size}"
            )
        if self._hash.hexdigest() != self._hex:
            raise DigestMismatchError(
                f"{self._what} {self._digest}: content hashes to "
                f"{self._hash.name}:{self._hash.hexdigest()}; the blob is corrupt or "
                "was tampered with"
            )
        self.verified = True

    def close(self) -> None:
        if not self.closed:
            for obj in [self._source, *self._closing]:
                obj.close()
        super().close()


class VerifiedReader(io.BufferedReader):
    """A buffered reader that verifies at EOF.

    Leaving a ``with`` block without an exception reads the rest and verifies it,
    so a consumer that stops early (tar's end-of-archive marker) still gets checked.
    """

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and not self.closed:
                while self.read(_BUF):
                    pass
        finally:
            self.close()


def read_verified(
    source: BinaryIO,
    digest: str,
    size: int | None,
    *,
    what: str = "blob",
    closing: Iterable[Any] = (),
) -> VerifiedReader:
    """Wrap ``source`` so reading it to the end checks ``digest`` and ``size``."""
    raw = _VerifyingRaw(source, digest, size, what=what, closing=closing)
    return VerifiedReader(raw, _BUF)


class BlobSource(Protocol):
    """Where an image's blobs come from: a layout directory or an archive."""

    def read_index(self) -> Index:
        """The top-level ``index.json``."""
        ...

    def has_blob(self, digest: str) -> bool: ...

    def open_blob(self, desc: Descriptor) -> VerifiedReader:
        """The blob's bytes, verified against ``desc`` at EOF."""
        ...


def read_blob(source: BlobSource, desc: Descriptor, *, max_size: int) -> bytes:
    """A whole small blob (manifest, config), verified; refuses blobs above ``max_size``."""
    if desc.size > max_size:
        raise InvalidImageError(
            f"{desc.media_type} {desc.digest} is {desc.size} bytes, above the "
            f"{max_size}-byte limit for such documents"
        )
    with source.open_blob(desc) as f:
        return f.read()


class BlobWriter:
    """A blob being written: hashes as it goes, renamed into place by :meth:`commit`."""

    def __init__(self, layout: OciLayout) -> None:
        self._layout = layout
        fd, name = tempfile.mkstemp(prefix=".tmp-blob-", dir=layout.path)
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        if self._file is None:
            raise ValueError("write to a committed or aborted blob")
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.size += view.nbytes
        self._file.write(view)
        return view.nbytes

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()

    def commit(self, expected_digest: str | None = None, expected_size: int | None = None) -> str:
        """Move the blob into ``blobs/sha256/``; returns its digest.

        With ``expected_digest`` / ``expected_size`` the blob is discarded and
        :class:`DigestMismatchError` raised if they disagree.
        """
        if self._file is None:
            raise ValueError("blob already committed or aborted")
        self._file.close()
        self._file = None
        digest = self.digest
        if (expected_digest is not None and expected_digest != digest) or (
            expected_size is not None and expected_size != self.size
        ):
            self._tmp.unlink(missing_ok=True)
            raise DigestMismatchError(
                f"blob written is {digest} ({self.size} bytes), expected "
                f"{expected_digest} ({expected_size} bytes)"
            )
        dest = self._layout.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self._tmp, 0o644)  # mkstemp makes 0600; blobs are public content
        os.replace(self._tmp, dest)
        return digest

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:  # not committed: nothing half-written stays
            self.abort()


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename (temp file beside it)."""
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


class OciLayout:
    """An OCI image layout directory.  Use :meth:`open` or :meth:`create`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # -- opening --
    @classmethod
    def open(cls, path: Path | str) -> OciLayout:
        """Open an existing layout; errors say what is missing."""
        p = Path(path)
        marker = p / "oci-layout"
        if not p.is_dir():
            raise ImageNotFoundError(f"{p}: no such OCI layout directory")
        try:
            obj = json.loads(marker.read_bytes())
        except FileNotFoundError:
            raise InvalidImageError(f"{p}: not an OCI layout (no 'oci-layout' file)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidImageError(f"{marker}: not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("imageLayoutVersion"), str):
            raise InvalidImageError(f"{marker}: missing 'imageLayoutVersion'")
        return cls(p)

    @classmethod
    def create(cls, path: Path | str) -> OciLayout:
        """Open the layout at ``path``, creating it if the directory is missing or empty."""
        p = Path(path)
        if (p / "oci-layout").exists():
            return cls.open(p)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise OciError(
                f"{p}: exists and is not an OCI layout; refusing to write an image into it"
            )
        p.mkdir(parents=True, exist_ok=True)
        (p / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        atomic_write(
            p / "oci-layout", canonical_json({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION})
        )
        atomic_write(p / "index.json", Index().to_json())
        return cls(p)

    # -- blobs --
    def blob_path(self, digest: str) -> Path:
        alg, hexpart = parse_digest(digest)  # validated: no path tricks
        return self.path / "blobs" / alg / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, desc: Descriptor) -> VerifiedReader:
        try:
            f = self.blob_path(desc.digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"{self.path}: blob {desc.digest} ({desc.media_type}) is missing"
            ) from None
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            # A hostile layout could point a blob at /dev/zero or a FIFO.
            f.close()
            raise InvalidImageError(f"{self.path}: blob {desc.digest} is not a regular file")
        return read_verified(f, desc.digest, desc.size, what=desc.media_type)

    def blob_writer(self) -> BlobWriter:
        """A writer for a blob whose digest is known only at the end."""
        return BlobWriter(self)

    def write_blob(
        self, data: bytes | BinaryIO, *, expected_digest: str | None = None
    ) -> tuple[str, int]:
        """Store a blob from bytes or a stream; returns ``(digest, size)``."""
        with self.blob_writer() as w:
            if isinstance(data, bytes | bytearray | memoryview):
                w.write(data)
            else:
                while chunk := data.read(_BUF):
                    w.write(chunk)
            size = w.size
            return w.commit(expected_digest), size

    def write_json_blob(self, document: bytes, media_type: str) -> Descriptor:
        """Store a JSON document (already canonical bytes) and describe it."""
        digest, size = self.write_blob(document)
        return Descriptor(media_type=media_type, digest=digest, size=size)

    # -- index.json and tags --
    def read_index(self) -> Index:
        path = self.path / "index.json"
        try:
            with path.open("rb") as f:
                data = f.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            raise InvalidImageError(f"{self.path}: OCI layout without index.json") from None
        if len(data) > MAX_MANIFEST_SIZE:
            raise InvalidImageError(f"{path}: larger than {MAX_MANIFEST_SIZE} bytes")
        return Index.from_json(data)

    def write_index(self, index: Index) -> None:
        atomic_write(self.path / "index.json", index.to_json())

    def tags(self) -> list[str]:
        return sorted({d.ref_name for d in self.read_index().manifests if d.ref_name})

    def add_manifest(
        self,
        manifest: Manifest | bytes,
        tag: str | None = None,
        *,
        media_type: str | None = None,
        platform: Platform | None = None,
    ) -> Descriptor:
        """Store a manifest (or an index, given its bytes and ``media_type``) and point
        ``index.json`` at it, replacing whatever had the same tag before.

        Without a tag the manifest is added untagged (and replaces nothing).
        Returns the descriptor as written into ``index.json``.
        """
        if isinstance(manifest, Manifest):
            body, kind = manifest.to_json(), manifest.media_type
        else:
            body, kind = bytes(manifest), media_type or mt.OCI_MANIFEST
        digest, size = self.write_blob(body)
        annotations = {ANNOTATION_REF_NAME: tag} if tag else {}
        desc = Descriptor(
            media_type=kind, digest=digest, size=size, annotations=annotations, platform=platform
        )
        index = self.read_index()
        if tag:
            kept = [d for d in index.manifests if d.ref_name != tag]
        else:
            kept = [d for d in index.manifests if d.ref_name or d.digest != digest]
        self.write_index(
            Index(
                manifests=(*kept, desc),
                media_type=index.media_type or mt.OCI_INDEX,
                annotations=index.annotations,
                extra=index.extra,
            )
        )
        return desc

    def remove_tag(self, tag: str) -> bool:
        """Drop ``tag`` from ``index.json`` (blobs stay); True if it was there."""
        index = self.read_index()
        kept = tuple(d for d in index.manifests if d.ref_name != tag)
        if len(kept) == len(index.manifests):
            return False
        self.write_index(
            Index(kept, index.media_type, annotations=index.annotations, extra=index.extra)
        )
        return True
