"""The updater's view of a sysroot: chunk cache, stored TOCs, the current deployment.

A thin adapter over :class:`chunkah.host.sysroot.Sysroot` and
:func:`chunkah.host.deploy.commit_deployment`, so the update pipeline talks to one
object and tests can see what it relies on.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import zstandard

from chunkah.errors import StateError, VerificationError
from chunkah.format.toc import decode_toc_frame
from chunkah.host.deploy import collect_garbage, commit_deployment, crash_point
from chunkah.host.index import ChunkRef, IndexEntry, LayerIndex, index_from_toc
from chunkah.host.sysroot import DeploymentMetadata, LayerRecord, Sysroot, is_disk_full

__all__ = ["HostStore"]

_FORMAT_CHUNKAH = "chunkah"
_FORMAT_LISTING = "listing"  # a plain layer's entries, recorded after a whole download


class _CacheView:
    """`sha in view` asks the chunk cache (an lstat), for the planner's inventory."""

    def __init__(self, sysroot: Sysroot) -> None:
        self._sysroot = sysroot

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, bytes) and self._sysroot.cache_has(sha)


def _listing_json(index: LayerIndex) -> bytes:
    rows = []
    for e in index.entries:
        rows.append(
            {
                "path": base64.b64encode(e.path).decode(),
                "type": e.type,
                "mode": e.mode,
                "uid": e.uid,
                "gid": e.gid,
                "mtime": e.mtime,
                "size": e.size,
                "link": base64.b64encode(e.link).decode(),
                "xattrs": [[k, base64.b64encode(v).decode()] for k, v in e.xattrs],
                "rdev": list(e.rdev),
                "sha256": e.sha256.hex(),
            }
        )
    doc = {"version": 1, "digest": index.digest, "diff_id": index.diff_id, "entries": rows}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _listing_index(data: bytes, record: LayerRecord) -> LayerIndex:
    doc = json.loads(data)
    entries = []
    for r in doc["entries"]:
        sha = bytes.fromhex(r["sha256"])
        chunks = (ChunkRef(sha, int(r["size"]), -1),) if r["type"] == "file" and r["size"] else ()
        entries.append(
            IndexEntry(
                path=base64.b64decode(r["path"]),
                type=r["type"],
                mode=int(r["mode"]),
                uid=int(r["uid"]),
                gid=int(r["gid"]),
                mtime=int(r["mtime"]),
                size=int(r["size"]),
                link=base64.b64decode(r["link"]),
                xattrs=tuple((k, base64.b64decode(v)) for k, v in r["xattrs"]),
                rdev=(int(r["rdev"][0]), int(r["rdev"][1])),
                sha256=sha,
                chunks=chunks,
            )
        )
    return LayerIndex(
        record.digest, record.diff_id, record.size, record.media_type, "whole", entries
    )


class HostStore:
    """Everything the update pipeline stores or looks up on a sysroot (lock held)."""

    def __init__(self, sysroot: Sysroot) -> None:
        self.sysroot = sysroot
        self._pending_tocs: dict[str, tuple[bytes, str]] = {}  # layer digest -> (toc bytes, format)

    # -- chunks (ChunkStore protocol) --
    def has(self, sha256: bytes) -> bool:
        return self.sysroot.cache_has(sha256)

    def put(self, sha256: bytes, data: bytes) -> None:
        # The fetcher verified the bytes against the TOC already.
        self.sysroot.cache_put(sha256, data, verify=False, sync=False)

    def read(self, sha256: bytes) -> bytes:
        path = self.sysroot.cache_get(sha256)
        if path is None:
            raise StateError(f"chunk sha256:{sha256.hex()} vanished from the cache")
        data = path.read_bytes()
        if hashlib.sha256(data).digest() != sha256:
            path.unlink(missing_ok=True)
            raise VerificationError(f"cached chunk sha256:{sha256.hex()} is corrupt (removed)")
        return data

    def put_stream(self, f: IO[bytes], size: int) -> tuple[bytes, int]:
        """Copy a file's content into the cache in blocks; returns (sha256, size)."""
        tmpdir = self.sysroot.cache_dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        total = 0
        fd, tmp = tempfile.mkstemp(prefix="file-", dir=tmpdir)
        try:
            with os.fdopen(fd, "wb") as out:
                while total < size:
                    block = f.read(min(1 << 20, size - total))
                    if not block:
                        break
                    h.update(block)
                    out.write(block)
                    total += len(block)
            if total != size:
                raise VerificationError(f"layer member ended after {total} of {size} bytes")
            final = self.sysroot.chunk_path(h.digest())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            tmp = ""
        except OSError as exc:
            if is_disk_full(exc):
                raise StateError(
                    f"no space left in {self.sysroot.cache_dir} while storing a layer"
                ) from exc
            raise
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return h.digest(), total

    def cached_set(self) -> _CacheView:
        return _CacheView(self.sysroot)

    # -- TOCs and listings --
    def save_toc(self, layer_digest: str, frame: bytes, body_size: int) -> None:
        self._pending_tocs[layer_digest] = (frame, _FORMAT_CHUNKAH)
        digest = "sha256:" + hashlib.sha256(frame).hexdigest()
        self.sysroot.toc_put(digest, frame, sync=False)
        crash_point("toc-stored")

    def save_listing(self, layer_digest: str, index: LayerIndex) -> None:
        self._pending_tocs[layer_digest] = (_listing_json(index), _FORMAT_LISTING)

    def load_index(self, layer_digest: str) -> LayerIndex | None:
        """A layer index already on this host: from a deployment or an earlier run."""
        for record in self._known_layers():
            if record.digest == layer_digest and record.toc_digest:
                return self._index_of(record)
        return None

    def _known_layers(self) -> Iterator[LayerRecord]:
        for dep in (self.sysroot.current(), self.sysroot.previous()):
            if dep is not None:
                yield from dep.layers

    def _index_of(self, record: LayerRecord) -> LayerIndex | None:
        assert record.toc_digest is not None
        path = self.sysroot.toc_path(record.toc_digest)
        if path is None:
            return None
        data = path.read_bytes()
        if record.toc_format == _FORMAT_LISTING:
            return _listing_index(data, record)
        if record.toc_format != _FORMAT_CHUNKAH:
            return None
        toc = decode_toc_frame(
            data, expected_digest=record.toc_digest, body_size=_body_size_of(data)
        )
        return index_from_toc(
            toc, digest=record.digest, diff_id=record.diff_id, blob_size=record.size,
            media_type=record.media_type, toc_bytes=len(data),
        )  # fmt: skip

    def stored_toc(self, toc_digest: str) -> bytes | None:
        """A TOC frame fetched earlier (an interrupted run, another deployment)."""
        path = self.sysroot.toc_path(toc_digest)
        return path.read_bytes() if path is not None else None

    # -- deployments --
    def current_digest(self) -> str | None:
        cur = self.sysroot.current()
        return cur.manifest_digest if cur is not None else None

    def current_indexes(self) -> tuple[list[LayerIndex], Path] | None:
        cur = self.sysroot.current()
        if cur is None:
            return None
        indexes = []
        for record in cur.layers:
            index = self._index_of(record) if record.toc_digest else None
            if index is None:
                return None  # unknown format: no local reuse (still correct, just costlier)
            indexes.append(index)
        return indexes, cur.root

    @property
    def staging_root(self) -> Path:
        return self.sysroot.staging_dir

    def stage(self) -> contextlib.AbstractContextManager[Path]:
        return self.sysroot.stage()

    def link(self, src: bytes, dst: bytes) -> None:
        os.link(src, dst)

    def deploy(
        self,
        staging: Path,
        *,
        reference: str,
        manifest_digest: str,
        config_digest: str,
        layers: Sequence[tuple[str, str, str, int]],
        extra: Mapping[str, Any],
    ) -> str:
        """Commit ``staging`` as the new current deployment; returns its id."""
        records = []
        tocs: dict[str, bytes | Path] = {}
        for digest, diff_id, media_type, size in layers:
            pending = self._pending_tocs.get(digest)
            known = next(
                (r for r in self._known_layers() if r.digest == digest and r.toc_digest), None
            )
            if pending is not None:
                data, fmt = pending
                toc_digest = "sha256:" + hashlib.sha256(data).hexdigest()
                tocs[toc_digest] = data
                records.append(LayerRecord(digest, diff_id, media_type, size, toc_digest, fmt))
            elif known is not None:
                records.append(known)
                path = self.sysroot.toc_path(known.toc_digest or "")
                if path is not None and known.toc_digest:
                    tocs[known.toc_digest] = path
            else:
                records.append(LayerRecord(digest, diff_id, media_type, size))
        metadata = DeploymentMetadata(
            image_ref=reference,
            manifest_digest=manifest_digest,
            layers=tuple(records),
            config_digest=config_digest,
            tocs=tocs,
            extra=dict(extra),
        )
        deployment = commit_deployment(self.sysroot, staging, metadata)
        # The new deployment's files are the chunk source from now on: the cache can go.
        collect_garbage(self.sysroot, chunk_refs=lambda _path, _fmt: ())
        return deployment.id


def _body_size_of(frame: bytes) -> int:
    """The decompressed size recorded in the TOC frame's zstd header."""
    try:
        params = zstandard.get_frame_parameters(frame[8:])
    except zstandard.ZstdError as exc:
        raise VerificationError(f"stored TOC frame is corrupt: {exc}") from None
    if params.content_size <= 0:
        raise VerificationError("stored TOC frame has no content size")
    return int(params.content_size)
