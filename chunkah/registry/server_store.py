"""Storage of the embedded registry: one OCI layout per repository under a root.

``ROOT/<name>/`` is an ordinary OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/``) that skopeo, umoci or ``chunkah`` read as ``oci:ROOT/<name>``.
Every manifest pushed is listed in ``index.json``: tagged ones with
``org.opencontainers.image.ref.name``, the others (pushed by digest, or whose tag
moved on) without it.  The server keeps its own state in ``ROOT/<name>/.chunkah/``:
upload sessions (``uploads/<uuid>``, on the same file system as ``blobs/`` so
finishing an upload is a rename) and the referrers cache (``referrers.json``).

Everything here is synchronous; :mod:`.server` calls it from worker threads and
serialises writers of one repository with an asyncio lock, and this module adds an
``flock`` so two processes on one root do not lose each other's ``index.json``
updates.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chunkah.oci import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    Descriptor,
    Index,
    OciLayout,
    canonical_json,
)
from chunkah.oci.layout import atomic_write

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "NAME_MAX",
    "ManifestInfo",
    "RepoStore",
    "catalog",
    "is_valid_digest",
    "is_valid_name",
    "is_valid_tag",
    "manifest_info",
]

#: What a manifest PUT may carry and a manifest GET may answer.
MANIFEST_MEDIA_TYPES = MANIFEST_TYPES | INDEX_TYPES

#: Longest repository name accepted (docker/distribution's limit).
NAME_MAX = 255

# The distribution spec's repository name grammar.
_NAME_RE = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# Components that would land inside another repository's layout files.
_RESERVED = frozenset({"blobs", "index.json", "oci-layout"})
_STATE_DIR = ".chunkah"
_UUID_RE = re.compile(r"^[a-f0-9]{32}$")
_BUF = 1 << 20
#: Manifests up to this size are kept in memory once read ...
SMALL_CACHE_ITEM = 1 << 20
#: ... up to this many bytes per repository (oldest dropped first).
SMALL_CACHE_BYTES = 16 << 20


def is_valid_name(name: str) -> bool:
    """A repository name per the distribution spec, minus the layouts' own file names."""
    return (
        len(name) <= NAME_MAX
        and _NAME_RE.match(name) is not None
        and not _RESERVED.intersection(name.split("/"))
    )


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.match(tag) is not None


def is_valid_digest(digest: str) -> bool:
    """Only ``sha256:<64 lowercase hex>``: the algorithm blobs are stored under."""
    return _DIGEST_RE.match(digest) is not None


def is_valid_upload_id(upload_id: str) -> bool:
    return _UUID_RE.match(upload_id) is not None


@dataclass(frozen=True)
class ManifestInfo:
    """What the server needs to know about a stored manifest or index."""

    media_type: str
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, str]

    def referrer_descriptor(self, digest: str, size: int) -> dict[str, Any]:
        """The descriptor listed by the referrers API for this manifest."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": digest, "size": size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def manifest_info(body: bytes, declared_type: str | None = None) -> ManifestInfo | None:
    """Media type, subject and artifact type of a manifest; None if it is not one.

    ``declared_type`` (the ``index.json`` entry's or the PUT's ``Content-Type``) is used
    when the body carries no ``mediaType``; otherwise the body's must be a manifest type.
    """
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        return None
    kind = obj.get("mediaType")
    if not isinstance(kind, str):
        if declared_type in MANIFEST_MEDIA_TYPES:
            kind = declared_type
        elif "manifests" in obj:
            kind = OCI_INDEX
        elif "config" in obj and "layers" in obj:
            kind = "application/vnd.oci.image.manifest.v1+json"
        else:
            return None
    if kind not in MANIFEST_MEDIA_TYPES:
        return None
    subject = obj.get("subject")
    subject_digest = subject.get("digest") if isinstance(subject, dict) else None
    artifact_type = obj.get("artifactType")
    if not isinstance(artifact_type, str):
        artifact_type = None
        config = obj.get("config")
        if kind in MANIFEST_TYPES and isinstance(config, dict):
            ct = config.get("mediaType")
            artifact_type = ct if isinstance(ct, str) else None
    annotations = obj.get("annotations")
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        annotations = {}
    return ManifestInfo(
        media_type=kind,
        subject=subject_digest if isinstance(subject_digest, str) else None,
        artifact_type=artifact_type,
        annotations=dict(annotations),
    )


class RepoStore:
    """One repository: an OCI layout plus the server's state beside it.

    Methods are blocking and safe to run in worker threads; writers of
    ``index.json`` take an exclusive ``flock`` on ``.chunkah/lock``.
    """

    def __init__(self, root: Path, name: str) -> None:
        if not is_valid_name(name):
            raise ValueError(f"invalid repository name {name!r}")
        self.name = name
        self.path = root.joinpath(*name.split("/"))
        self.layout = OciLayout(self.path)
        self.state = self.path / _STATE_DIR
        # A fleet asks for the same manifest thousands of times a minute: index.json is
        # parsed again only when its (inode, mtime, size) change (writes are atomic
        # renames), and small manifests are kept, checked against the file's size.
        self._index_cache: tuple[tuple[int, ...], Index, dict[str, Descriptor]] | None = None
        self._index_writes = 0  # part of the key: our own writes always invalidate
        self._referrers_mem: tuple[tuple[int, ...], dict[str, dict[str, Any]]] | None = None
        self._small: dict[str, tuple[bytes, ManifestInfo | None]] = {}
        self._small_bytes = 0
        self._small_lock = threading.Lock()

    # -- existence and creation --
    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def create(self) -> None:
        """Make the layout if it is not there (its directory may hold sub-repositories)."""
        if self.exists():
            return
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.state / "uploads").mkdir(parents=True, exist_ok=True)
        if not (self.path / "index.json").exists():
            atomic_write(self.path / "index.json", Index().to_json())
        # oci-layout last: its presence is what makes the repository exist.
        atomic_write(
            self.path / "oci-layout", canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})
        )

    # -- blobs --
    def blob_path(self, digest: str) -> Path:
        return self.layout.blob_path(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return None
        return st.st_size

    def mount_blob(self, source: RepoStore, digest: str) -> bool:
        """Make ``source``'s blob ours (hard link, else copy); False if it has none."""
        src = source.blob_path(digest)
        if not src.is_file():
            return False
        dest = self.blob_path(digest)
        if dest.is_file():
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-blob-", dir=self.path)
        os.close(fd)
        try:
            os.unlink(tmp)
            try:
                os.link(src, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def read_small_blob(self, digest: str, limit: int = MAX_MANIFEST_SIZE) -> bytes | None:
        """A blob of at most ``limit`` bytes whose sha256 matches; None if missing or not.

        Blobs up to :data:`SMALL_CACHE_ITEM` bytes are remembered (at most
        :data:`SMALL_CACHE_BYTES` in all); a remembered one is returned after a
        ``stat`` shows the file is still there with the same size.
        """
        path = self.blob_path(digest)
        cached = self._small.get(digest)
        if cached is not None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                self._forget_small(digest)
                return None
            if st.st_size == len(cached[0]) and len(cached[0]) <= limit:
                return cached[0]
            self._forget_small(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return None
        if len(data) <= SMALL_CACHE_ITEM:
            with self._small_lock:
                if digest not in self._small:
                    while self._small and self._small_bytes + len(data) > SMALL_CACHE_BYTES:
                        old = next(iter(self._small))  # oldest first (dicts keep order)
                        self._small_bytes -= len(self._small.pop(old)[0])
                    self._small[digest] = (data, None)
                    self._small_bytes += len(data)
        return data

    def _forget_small(self, digest: str) -> None:
        with self._small_lock:
            gone = self._small.pop(digest, None)
            if gone is not None:
                self._small_bytes -= len(gone[0])

    def small_blob_cached(self, digest: str) -> bool:
        """Whether :meth:`read_small_blob` would answer from memory (after one stat)."""
        return digest in self._small

    def manifest_info(self, digest: str, body: bytes, declared: str | None) -> ManifestInfo | None:
        """:func:`manifest_info` of a stored manifest, remembered beside its bytes."""
        cached = self._small.get(digest)
        if cached is not None and cached[0] is body and cached[1] is not None:
            return cached[1]
        info = manifest_info(body, declared)
        if cached is not None and cached[0] is body and info is not None:
            with self._small_lock:
                if self._small.get(digest) is cached:
                    self._small[digest] = (body, info)
        return info

    def write_blob_bytes(self, data: bytes) -> str:
        digest, _ = self.layout.write_blob(data)
        return digest

    # -- upload sessions --
    def upload_path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.state / "uploads" / upload_id

    def new_upload(self, upload_id: str) -> Path:
        path = self.upload_path(upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=False)
        return path

    def commit_upload(self, upload_id: str, digest: str) -> None:
        """Move a finished, verified upload into ``blobs/`` (atomic rename)."""
        src = self.upload_path(upload_id)
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, 0o644)
        os.replace(src, dest)

    # -- index.json --
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _index_key(self) -> tuple[int, ...] | None:
        writes = self._index_writes
        try:
            st = os.stat(self.path / "index.json")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (writes, st.st_ino, st.st_mtime_ns, st.st_size)

    def read_index(self) -> Index:
        key = self._index_key()
        cached = self._index_cache
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        index = self.layout.read_index()
        if key is not None:
            by_ref: dict[str, Descriptor] = {}
            for d in index.manifests:  # the last entry for a tag or digest wins
                if d.ref_name:
                    by_ref[d.ref_name] = d
                by_ref[d.digest] = d
            # One assignment: readers in other threads see the old triple or the new one.
            self._index_cache = (key, index, by_ref)
        return index

    def index_cached(self) -> bool:
        """Whether ``index.json`` is unchanged since it was last parsed (one stat)."""
        cached = self._index_cache
        return cached is not None and cached[0] == self._index_key()

    def put_manifest(self, desc: Descriptor, tag: str | None) -> None:
        """List a stored manifest in ``index.json``.

        With a tag, the entry carrying that tag now points to ``desc``; the manifest it
        pointed to before stays listed untagged (still pullable by digest, still a
        referrer).  Without one, an untagged entry is added unless the digest is listed.
        """
        with self._locked():
            # Under the lock, from the file: another process may have just written it.
            index = self.layout.read_index()
            entries = list(index.manifests)
            if tag is None:
                if any(d.digest == desc.digest for d in entries):
                    return
                entries.append(desc)
            else:
                old = [d for d in entries if d.ref_name == tag]
                entries = [d for d in entries if d.ref_name != tag]
                for d in old:
                    if d.digest != desc.digest and not any(e.digest == d.digest for e in entries):
                        entries.append(_untagged(d))
                # The tagged entry covers an untagged one for the same digest.
                entries = [d for d in entries if d.ref_name or d.digest != desc.digest]
                entries.append(
                    Descriptor(
                        media_type=desc.media_type,
                        digest=desc.digest,
                        size=desc.size,
                        annotations={ANNOTATION_REF_NAME: tag},
                    )
                )
            self._write_index(index, entries)

    def delete_manifest(self, reference: str) -> bool:
        """Drop a tag (its manifest stays, untagged) or every entry of a digest.

        Returns False if nothing matched.
        """
        with self._locked():
            index = self.layout.read_index()  # under the lock, from the file
            if is_valid_digest(reference):
                gone = [d for d in index.manifests if d.digest == reference]
                kept = [d for d in index.manifests if d.digest != reference]
            else:
                gone = [d for d in index.manifests if d.ref_name == reference]
                kept = [d for d in index.manifests if d.ref_name != reference]
                for d in gone:  # still pullable by digest, as after a tag move
                    if not any(e.digest == d.digest for e in kept):
                        kept.append(_untagged(d))
            if not gone:
                return False
            self._write_index(index, kept)
            return True

    def _write_index(self, index: Index, entries: list[Descriptor]) -> None:
        # Before and after: a reader that parsed the old file meanwhile stores a key
        # that can never match again, even if a later file reuses the old inode.
        self._index_writes += 1
        self._index_cache = None
        try:
            self.layout.write_index(
                Index(
                    manifests=tuple(entries),
                    media_type=index.media_type or OCI_INDEX,
                    annotations=index.annotations,
                    extra=index.extra,
                )
            )
        finally:
            self._index_writes += 1
            self._index_cache = None

    def find_manifest(self, reference: str) -> Descriptor | None:
        """The ``index.json`` entry for a tag (last wins) or a digest (tagged or not)."""
        index = self.read_index()
        cached = self._index_cache
        if cached is not None and cached[1] is index:
            return cached[2].get(reference)
        found: Descriptor | None = None
        for d in index.manifests:
            if d.ref_name == reference or d.digest == reference:
                found = d
        return found

    def tags(self) -> list[str]:
        return sorted({d.ref_name for d in self.read_index().manifests if d.ref_name})

    # -- referrers --
    def referrers(self, subject: str) -> list[dict[str, Any]]:
        """Descriptors of the listed manifests whose ``subject`` is ``subject``.

        The subject of each manifest is cached in ``.chunkah/referrers.json``, keyed
        by digest and stamped with the sha256 of the ``index.json`` it describes, so
        a restart reads nothing new and a hand-edited layout costs one read per
        manifest that the cache does not know yet.
        """
        key = self._index_key()
        mem = self._referrers_mem
        if key is not None and mem is not None and mem[0] == key:
            cache = mem[1]
        else:
            cache = self._referrers_cache()
            if key is not None:
                self._referrers_mem = (key, cache)  # one assignment, as for the index
        out = [e["descriptor"] for e in cache.values() if e.get("subject") == subject]
        out.sort(key=lambda d: str(d["digest"]))
        return out

    def referrers_cached(self) -> bool:
        """Whether :meth:`referrers` would answer from memory (one stat, no file read)."""
        mem = self._referrers_mem
        return mem is not None and mem[0] == self._index_key()

    def _referrers_cache(self) -> dict[str, dict[str, Any]]:
        index_path = self.path / "index.json"
        index_bytes = index_path.read_bytes()
        stamp = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
        cache_path = self.state / "referrers.json"
        old: dict[str, Any] = {}
        try:
            loaded = json.loads(cache_path.read_bytes())
            if isinstance(loaded, dict) and isinstance(loaded.get("manifests"), dict):
                old = loaded
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        manifests_old: dict[str, dict[str, Any]] = old.get("manifests", {})
        if old.get("index") == stamp:
            return manifests_old
        index = Index.from_json(index_bytes)
        fresh: dict[str, dict[str, Any]] = {}
        for d in index.manifests:
            if d.digest in fresh:
                continue
            cached = manifests_old.get(d.digest)
            if isinstance(cached, dict) and isinstance(cached.get("descriptor"), dict):
                fresh[d.digest] = cached
                continue
            body = self.read_small_blob(d.digest)
            info = manifest_info(body, d.media_type) if body is not None else None
            if info is None or body is None:
                continue
            fresh[d.digest] = {
                "subject": info.subject,
                "descriptor": info.referrer_descriptor(d.digest, len(body)),
            }
        self.state.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a read-only root still answers
            atomic_write(cache_path, canonical_json({"index": stamp, "manifests": fresh}))
        return fresh


def _untagged(d: Descriptor) -> Descriptor:
    annotations = {k: v for k, v in d.annotations.items() if k != ANNOTATION_REF_NAME}
    return Descriptor(
        media_type=d.media_type,
        digest=d.digest,
        size=d.size,
        annotations=annotations,
        platform=d.platform,
        urls=d.urls,
        extra=d.extra,
    )


def catalog(root: Path, limit: int = 100_000) -> list[str]:
    """Names of the repositories under ``root`` (sorted), at most ``limit`` of them."""
    found: list[str] = []
    stack = [(root, "")]
    while stack and len(found) < limit:
        path, name = stack.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue
        names = {e.name for e in entries}
        if name and "oci-layout" in names and is_valid_name(name):
            found.append(name)
        for e in entries:
            if e.name.startswith(".") or e.name in _RESERVED:
                continue
            if e.is_dir(follow_symlinks=False):
                child = f"{name}/{e.name}" if name else e.name
                if len(child) <= NAME_MAX:
                    stack.append((Path(e.path), child))
    return sorted(found)
