"""``chunkah serve``: an OCI distribution (v2) registry over a directory of OCI layouts.

Each repository ``NAME`` is the OCI layout ``ROOT/NAME/`` (see :mod:`.server_store`);
it is created by the first push.  Supported: the ``/v2/`` ping, manifests
(GET/HEAD/PUT/DELETE by tag or digest, with content negotiation), blobs (GET/HEAD
with single, suffix, open-ended and multi-range requests, ``If-Range``; DELETE is
refused), uploads (POST, chunked PATCH, PUT, monolithic POST, cross-repository
mount, status, cancel), tags and catalog lists with pagination, and the OCI 1.1
referrers API.  ``docs/serve.md`` has the rules and limits.

Entry points: :func:`create_app` (the aiohttp application, for tests and
embedding) and :func:`serve` (blocking, for the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import resource
import secrets
import signal
import stat
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from aiohttp import web

from chunkah.oci import (
    INDEX_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    InvalidImageError,
    Manifest,
    OciError,
)

from .server_ranges import (
    MAX_RANGES,
    ByteRange,
    MultipartPlan,
    RangeNotSatisfiableError,
    if_range_allows,
    parse_range,
)
from .server_store import (
    MANIFEST_MEDIA_TYPES,
    RepoStore,
    catalog,
    is_valid_digest,
    is_valid_name,
    is_valid_tag,
    is_valid_upload_id,
    manifest_info,
)

__all__ = [
    "LISTEN_BACKLOG",
    "MAX_RANGE_HEADER",
    "REGISTRY_KEY",
    "STATS_KEY",
    "AccessStats",
    "create_app",
    "raise_open_file_limit",
    "run_server",
    "serve",
]

log = logging.getLogger("chunkah.registry.server")
#: One line per request: method, path, status, body bytes sent, Range header, time.
access_log = logging.getLogger("chunkah.registry.access")

#: Largest request header field accepted (room for ~1024 ranges of 12-digit offsets).
MAX_RANGE_HEADER = 64 << 10
_IO_BLOCK = 1 << 20
#: Bodies up to this size are read with one pread on the event loop and written
#: (page-cache reads of this size take tens of microseconds; loop.sendfile and a
#: worker thread each cost more than that per request).
_INLINE_BODY = 256 << 10
_API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
_OCTET = "application/octet-stream"
_EXISTS_TTL = 1.0
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)$")


# -- errors -------------------------------------------------------------------------


class RegistryError(Exception):
    """An error answered in the distribution spec's JSON format."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        body = json.dumps({"errors": [err]}).encode()
        headers = {**_API_HEADER, **self.headers}
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=headers
        )


def _name_unknown(name: str) -> RegistryError:
    return RegistryError(
        404, "NAME_UNKNOWN", "repository name not known to registry", detail={"name": name}
    )


def _digest_invalid(value: str) -> RegistryError:
    return RegistryError(
        400,
        "DIGEST_INVALID",
        "provided digest did not match uploaded content or is not sha256:<64 lowercase hex>",
        detail={"digest": value},
    )


# -- access statistics --------------------------------------------------------------


@dataclass
class AccessStats:
    """Totals since start (bounded memory), for tests and benchmarks."""

    requests: int = 0
    bytes_sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, sent: int) -> None:
        self.requests += 1
        self.bytes_sent += sent
        self.by_status[status] = self.by_status.get(status, 0) + 1


# -- state --------------------------------------------------------------------------


@dataclass
class _Upload:
    store: RepoStore
    upload_id: str
    size: int
    sha: Any  # hashlib sha256 object, or None when resumed after a restart
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def path(self) -> Path:
        return self.store.upload_path(self.upload_id)


@dataclass
class _Repo:
    store: RepoStore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seen: float = -1e9  # monotonic time its layout was last seen to exist


class Registry:
    """The server's state: repositories (with their locks) and open upload sessions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._repos: dict[str, _Repo] = {}
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self._create_lock = asyncio.Lock()

    def repo(self, name: str) -> _Repo:
        known = self._repos.get(name)  # only valid names are ever remembered
        if known is not None:
            return known
        if not is_valid_name(name):
            raise RegistryError(
                400,
                "NAME_INVALID",
                "invalid repository name",
                detail={"name": name},
            )
        repo = self._repos.get(name)
        if repo is None:
            repo = _Repo(RepoStore(self.root, name))
            # Only repositories that exist are remembered: lookups of made-up names
            # must not grow the server's memory.
            if repo.store.exists():
                repo = self._repos.setdefault(name, repo)
        return repo

    def existing(self, name: str) -> _Repo:
        repo = self.repo(name)
        # A stat per request is measurable under a fleet's load; a repository removed
        # by hand is noticed within a second (repositories are never removed by us).
        now = time.monotonic()
        if now - repo.seen < _EXISTS_TTL:
            return repo
        if not repo.store.exists():
            raise _name_unknown(name)
        repo.seen = now
        return repo

    async def created(self, name: str) -> _Repo:
        repo = self.repo(name)
        if not repo.store.exists():
            async with self._create_lock:
                await asyncio.to_thread(repo.store.create)
        return self._repos.setdefault(name, repo)

    async def new_upload(self, repo: _Repo) -> _Upload:
        upload_id = uuid.uuid4().hex
        await asyncio.to_thread(repo.store.new_upload, upload_id)
        upload = _Upload(repo.store, upload_id, 0, hashlib.sha256())
        self._uploads[(repo.store.name, upload_id)] = upload
        return upload

    def upload(self, repo: _Repo, upload_id: str) -> _Upload:
        unknown = RegistryError(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
            detail={"uuid": upload_id},
        )
        if not is_valid_upload_id(upload_id):
            raise unknown
        key = (repo.store.name, upload_id)
        upload = self._uploads.get(key)
        if upload is None:
            # Sessions outlive a restart: the data is on disk, the hash is redone at the end.
            try:
                size = os.stat(repo.store.upload_path(upload_id)).st_size
            except FileNotFoundError:
                raise unknown from None
            upload = self._uploads[key] = _Upload(repo.store, upload_id, size, None)
        return upload

    def drop_upload(self, upload: _Upload) -> None:
        self._uploads.pop((upload.store.name, upload.upload_id), None)
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()


REGISTRY_KEY = web.AppKey("registry", Registry)
STATS_KEY = web.AppKey("stats", AccessStats)


# -- routing ------------------------------------------------------------------------

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<upload>[^/]*)$"), "upload"),
    (re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$"), "blob"),
    (re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$"), "manifest"),
    (re.compile(r"^(?P<name>.+)/tags/list$"), "tags"),
    (re.compile(r"^(?P<name>.+)/referrers/(?P<digest>[^/]+)$"), "referrers"),
]

_ALLOWED = {
    "ping": "GET, HEAD",
    "catalog": "GET",
    "upload": "GET, POST, PATCH, PUT, DELETE",
    "blob": "GET, HEAD",
    "manifest": "GET, HEAD, PUT, DELETE",
    "tags": "GET",
    "referrers": "GET",
}


def _route(tail: str) -> tuple[str, dict[str, str]] | None:
    if tail == "":
        return "ping", {}
    if tail == "_catalog":
        return "catalog", {}
    for pattern, kind in _ROUTES:
        m = pattern.match(tail)
        if m is not None:
            return kind, m.groupdict()
    return None


async def _dispatch(request: web.Request) -> web.StreamResponse:
    tail = request.match_info["tail"]
    routed = _route(tail)
    if routed is None:
        raise RegistryError(404, "NOT_FOUND", "no such endpoint", detail={"path": request.path})
    kind, params = routed
    method = request.method
    allowed = _ALLOWED[kind]
    if method not in allowed.split(", "):
        if kind == "blob" and method == "DELETE":
            raise RegistryError(
                405, "UNSUPPORTED", "blob deletion is not supported", headers={"Allow": allowed}
            )
        raise RegistryError(
            405,
            "UNSUPPORTED",
            f"{method} is not supported on this endpoint",
            headers={"Allow": allowed},
        )
    handler: Callable[..., Awaitable[web.StreamResponse]] = _HANDLERS[(kind, method)]
    return await handler(request, **params)


# -- /v2/ and catalog ---------------------------------------------------------------


async def _ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, headers=_API_HEADER)


def _page(items: list[str], request: web.Request, path: str) -> tuple[list[str], str | None]:
    """Apply ``n`` and ``last``; returns the page and the ``Link`` to the next one."""
    last = request.query.get("last")
    if last:
        items = [t for t in items if t > last]
    n_text = request.query.get("n")
    if n_text is None or n_text == "":
        return items, None
    if not n_text.isdigit():
        raise RegistryError(
            400,
            "PAGINATION_NUMBER_INVALID",
            "invalid number of results requested",
            detail={"n": n_text},
        )
    n = int(n_text)
    if len(items) <= n:
        return items, None
    page = items[:n]
    link = None
    if page:
        link = f'<{path}?{urlencode({"n": n, "last": page[-1]})}>; rel="next"'
    return page, link


async def _catalog(request: web.Request) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    names = await asyncio.to_thread(catalog, registry.root)
    page, link = _page(names, request, "/v2/_catalog")
    headers = dict(_API_HEADER)
    if link:
        headers["Link"] = link
    return web.json_response({"repositories": page}, headers=headers)


# -- tags ---------------------------------------------------------------------------


async def _tags(request: web.Request, name: str) -> web.StreamResponse:
    repo = request.app[REGISTRY_KEY].existing(name)
    tags = await asyncio.to_thread(repo.store.tags)
    page, link = _page(tags, request, f"/v2/{name}/tags/list")
    headers = dict(_API_HEADER)
    if link:
        headers["Link"] = link
    return web.json_response({"name": name, "tags": page}, headers=headers)


# -- manifests ----------------------------------------------------------------------


def _check_reference(reference: str) -> None:
    if ":" in reference:
        if not is_valid_digest(reference):
            raise _digest_invalid(reference)
    elif not is_valid_tag(reference):
        raise RegistryError(
            400, "TAG_INVALID", "manifest tag did not match URI", detail={"tag": reference}
        )


def _accepted_types(request: web.Request) -> set[str] | None:
    """Media types the client accepts; None when it names no manifest type at all."""
    accepted: set[str] = set()
    for header in request.headers.getall("Accept", []):
        for item in header.split(","):
            parts = [p.strip() for p in item.split(";")]
            if not parts[0]:
                continue
            q = 1.0
            for p in parts[1:]:
                if p.lower().startswith("q="):
                    with contextlib.suppress(ValueError):
                        q = float(p[2:])
            if q > 0:
                accepted.add(parts[0].lower())
    if "*/*" in accepted or "application/*" in accepted:
        return None
    if not accepted & MANIFEST_MEDIA_TYPES:
        return None
    return accepted


def _load_manifest(store: RepoStore, reference: str) -> tuple[bytes, str, str] | None:
    """(body, media type, digest) of a stored manifest, or None."""
    desc = store.find_manifest(reference)
    if desc is None and not is_valid_digest(reference):
        return None
    digest = desc.digest if desc is not None else reference
    body = store.read_small_blob(digest)
    if body is None:
        return None
    info = store.manifest_info(digest, body, desc.media_type if desc is not None else None)
    if info is None:
        return None  # a layer or config blob is not a manifest
    media_type = desc.media_type if desc is not None else info.media_type
    return body, media_type, digest


def _manifest_in_memory(store: RepoStore, reference: str) -> bool:
    """Whether :func:`_load_manifest` would read no file (so it can run on the loop)."""
    if not store.index_cached():
        return False
    desc = store.find_manifest(reference)
    digest = desc.digest if desc is not None else reference
    return store.small_blob_cached(digest)


async def _get_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    repo = request.app[REGISTRY_KEY].existing(name)
    _check_reference(reference)
    if _manifest_in_memory(repo.store, reference):
        found = _load_manifest(repo.store, reference)  # two stats and dict lookups
    else:
        found = await asyncio.to_thread(_load_manifest, repo.store, reference)
    if found is None:
        raise RegistryError(
            404,
            "MANIFEST_UNKNOWN",
            "manifest unknown to registry",
            detail={"name": name, "reference": reference},
        )
    body, media_type, digest = found
    accepted = _accepted_types(request)
    if accepted is not None and media_type not in accepted:
        raise RegistryError(
            404,
            "MANIFEST_UNKNOWN",
            f"manifest is {media_type}, which the Accept header does not list",
            detail={"name": name, "reference": reference, "mediaType": media_type},
        )
    headers = {
        **_API_HEADER,
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Content-Type": media_type,
    }
    return web.Response(status=200, body=body, headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RegistryError(
            413,
            "SIZE_INVALID",
            f"manifest is larger than {limit} bytes",
            detail={"limit": limit, "size": request.content_length},
        )
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise RegistryError(
                413,
                "SIZE_INVALID",
                f"manifest is larger than {limit} bytes",
                detail={"limit": limit},
            )
    return bytes(buf)


def _manifest_type(request: web.Request, body: bytes) -> str:
    header = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(400, "MANIFEST_INVALID", f"manifest is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RegistryError(400, "MANIFEST_INVALID", "manifest is not a JSON object")
    body_type = obj.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise RegistryError(400, "MANIFEST_INVALID", "manifest 'mediaType' is not a string")
    if header in MANIFEST_MEDIA_TYPES:
        if body_type is not None and body_type != header:
            raise RegistryError(
                400,
                "MANIFEST_INVALID",
                f"Content-Type {header} differs from the manifest's mediaType {body_type}",
            )
        return header
    if body_type in MANIFEST_MEDIA_TYPES:
        return body_type
    raise RegistryError(
        400,
        "MANIFEST_INVALID",
        "unsupported manifest media type (OCI or Docker v2 schema 2 manifests and indexes only)",
        detail={"contentType": header, "mediaType": body_type},
    )


def _referenced_blobs(body: bytes, media_type: str) -> list[Descriptor]:
    """Descriptors that must already be in the repository for the manifest to be accepted."""
    try:
        if media_type in INDEX_TYPES:
            return list(Index.from_json(body, media_type).manifests)
        m = Manifest.from_json(body, media_type)
    except InvalidImageError as exc:
        raise RegistryError(400, "MANIFEST_INVALID", str(exc)) from None
    # Foreign layers (with urls) live elsewhere by design.
    return [m.config, *(d for d in m.layers if not d.urls)]


async def _put_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    registry.repo(name)  # validate the name before reading a body
    _check_reference(reference)
    body = await _read_limited(request, MAX_MANIFEST_SIZE)
    media_type = _manifest_type(request, body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if ":" in reference and reference != digest:
        raise RegistryError(
            400,
            "DIGEST_INVALID",
            f"manifest body hashes to {digest}, not {reference}",
            detail={"expected": reference, "actual": digest},
        )
    needed = _referenced_blobs(body, media_type)
    info = manifest_info(body, media_type)
    if info is None:  # unreachable after the checks above; keeps the types honest
        raise RegistryError(400, "MANIFEST_INVALID", "not a manifest")
    repo = registry.repo(name)
    missing = [
        d.digest
        for d in needed
        if not (is_valid_digest(d.digest) and repo.store.has_blob(d.digest))
    ]
    if missing:
        raise RegistryError(
            400,
            "MANIFEST_BLOB_UNKNOWN",
            f"manifest references {len(missing)} blob(s) not in {name}",
            detail={"digests": missing[:100]},
        )
    desc = Descriptor(media_type=media_type, digest=digest, size=len(body))
    repo = await registry.created(name)  # only now: a refused push leaves no empty repository
    async with repo.lock:
        await asyncio.to_thread(repo.store.write_blob_bytes, body)
        await asyncio.to_thread(
            repo.store.put_manifest, desc, None if ":" in reference else reference
        )
    headers = {
        **_API_HEADER,
        "Location": f"/v2/{name}/manifests/{digest}",
        "Docker-Content-Digest": digest,
    }
    if info.subject is not None:
        headers["OCI-Subject"] = info.subject
    return web.Response(status=201, headers=headers)


async def _delete_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    repo = request.app[REGISTRY_KEY].existing(name)
    _check_reference(reference)

    def delete() -> bool:
        done = repo.store.delete_manifest(reference)
        if done and is_valid_digest(reference):
            with contextlib.suppress(FileNotFoundError):
                repo.store.blob_path(reference).unlink()
        return done

    async with repo.lock:
        done = await asyncio.to_thread(delete)
    if not done:
        raise RegistryError(
            404,
            "MANIFEST_UNKNOWN",
            "manifest unknown to registry",
            detail={"name": name, "reference": reference},
        )
    return web.Response(status=202, headers=_API_HEADER)


# -- referrers ----------------------------------------------------------------------


async def _referrers(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    repo = request.app[REGISTRY_KEY].existing(name)
    if not is_valid_digest(digest):
        raise _digest_invalid(digest)
    if repo.store.referrers_cached():  # index.json unchanged: from memory, on the loop
        found = repo.store.referrers(digest)
    else:
        async with repo.lock:  # the cache file is rewritten when index.json changed
            found = await asyncio.to_thread(repo.store.referrers, digest)
    headers = dict(_API_HEADER)
    wanted = request.query.getall("artifactType", [])
    if wanted:
        found = [d for d in found if d.get("artifactType") in wanted]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": found,
    }
    headers["Content-Type"] = "application/vnd.oci.image.index.v1+json"
    return web.Response(status=200, body=json.dumps(body).encode(), headers=headers)


# -- blob downloads -----------------------------------------------------------------


class _BlobResponse(web.StreamResponse):
    """A blob body: counts what was sent and notes a client that went away."""

    sent = 0
    aborted: str | None = None


def _open_blob(store: RepoStore, digest: str) -> tuple[BinaryIO, int] | None:
    try:
        f: BinaryIO = open(store.blob_path(digest), "rb", buffering=0)  # noqa: SIM115
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        return None
    return f, st.st_size


async def _get_blob(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    repo = request.app[REGISTRY_KEY].existing(name)
    if not is_valid_digest(digest):
        raise _digest_invalid(digest)
    opened = _open_blob(repo.store, digest)
    if opened is None:
        raise RegistryError(
            404,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
            detail={"name": name, "digest": digest},
        )
    f, size = opened
    try:
        return await _send_blob(request, f, size, digest)
    finally:
        f.close()


async def _send_blob(
    request: web.Request, f: BinaryIO, size: int, digest: str
) -> web.StreamResponse:
    etag = f'"{digest}"'
    headers = {
        **_API_HEADER,
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Docker-Content-Digest": digest,
        "Cache-Control": "max-age=31536000",
    }
    ranges: list[ByteRange] | None = None
    range_header = request.headers.get("Range")
    if range_header is not None and if_range_allows(request.headers.get("If-Range"), etag):
        try:
            ranges = parse_range(range_header, size, max_ranges=MAX_RANGES)
        except RangeNotSatisfiableError as exc:
            raise RegistryError(
                416,
                "RANGE_NOT_SATISFIABLE",
                str(exc),
                detail={"size": size, "maxRanges": MAX_RANGES},
                headers={**headers, "Content-Range": f"bytes */{size}"},
            ) from None
    head = request.method == "HEAD"
    resp = _BlobResponse(headers=headers)
    if ranges is None or len(ranges) == 1:
        r = ranges[0] if ranges else ByteRange(0, size - 1)
        if ranges:
            resp.set_status(206)
            resp.headers["Content-Range"] = r.content_range(size)
        resp.content_type = _OCTET
        resp.content_length = r.length
        await resp.prepare(request)
        if not head and r.length > 0:
            await _send_file_range(request, resp, f, r.start, r.length)
        return resp
    plan = MultipartPlan(tuple(ranges), size, secrets.token_hex(16))
    resp.set_status(206)
    resp.headers["Content-Type"] = plan.content_type
    resp.content_length = plan.content_length
    await resp.prepare(request)
    if not head:
        await _send_multipart(request, resp, f, plan)
    return resp


async def _send_file_range(
    request: web.Request, resp: _BlobResponse, f: BinaryIO, offset: int, count: int
) -> None:
    """Send ``count`` bytes from ``offset``: one ``pread`` and write up to
    :data:`_INLINE_BODY`, else sendfile when the transport allows it (blocks otherwise)."""
    transport = request.transport
    try:
        if count <= _INLINE_BODY:
            block = os.pread(f.fileno(), count, offset)
            if len(block) != count:
                raise OSError(f"blob shrank while being sent ({count - len(block)} bytes missing)")
            await resp.write(block)
            resp.sent += len(block)
            return
        if transport is not None and not transport.is_closing():
            try:
                await asyncio.get_running_loop().sendfile(transport, f, offset, count)
                resp.sent += count
                return
            except NotImplementedError:
                pass  # TLS or a transport without sendfile: copy in blocks
        end = offset + count
        while offset < end:
            block = await asyncio.to_thread(
                os.pread, f.fileno(), min(_IO_BLOCK, end - offset), offset
            )
            if not block:
                raise OSError(f"blob shrank while being sent ({end - offset} bytes missing)")
            await resp.write(block)
            resp.sent += len(block)
            offset += len(block)
    except (ConnectionError, RuntimeError) as exc:
        # The client went away (RuntimeError: asyncio's "transport is closing").
        resp.aborted = repr(exc)


def _multipart_block(fd: int, plan: MultipartPlan, part: int, done: int) -> tuple[bytes, int, int]:
    """Up to about one block of body from ``(part, done)``: part heads and file bytes."""
    out = bytearray()
    n = len(plan.ranges)
    while part < n and len(out) < _IO_BLOCK:
        r = plan.ranges[part]
        if done == 0:
            out += plan.head(part)
        want = min(r.length - done, max(_IO_BLOCK - len(out), 1 << 16))
        data = os.pread(fd, want, r.start + done)
        if len(data) != want:
            raise OSError("blob shrank while being sent")
        out += data
        done += want
        if done == r.length:
            part, done = part + 1, 0
    if part == n:
        out += plan.tail
        part += 1
    return bytes(out), part, done


async def _send_multipart(
    request: web.Request, resp: _BlobResponse, f: BinaryIO, plan: MultipartPlan
) -> None:
    part, done = 0, 0
    # Small bodies are read on the loop: a worker thread costs more than the read.
    inline = plan.content_length <= _INLINE_BODY
    try:
        while part <= len(plan.ranges):
            if inline:
                block, part, done = _multipart_block(f.fileno(), plan, part, done)
            else:
                block, part, done = await asyncio.to_thread(
                    _multipart_block, f.fileno(), plan, part, done
                )
            await resp.write(block)
            resp.sent += len(block)
    except (ConnectionError, RuntimeError) as exc:
        resp.aborted = repr(exc)


# -- uploads ------------------------------------------------------------------------


def _upload_headers(name: str, upload: _Upload) -> dict[str, str]:
    return {
        **_API_HEADER,
        "Location": f"/v2/{name}/blobs/uploads/{upload.upload_id}",
        "Docker-Upload-UUID": upload.upload_id,
        # distribution's convention: "0-0" for an empty session.
        "Range": f"0-{max(upload.size - 1, 0)}",
    }


def _blob_created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={
            **_API_HEADER,
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        },
    )


def _write_blocks(f: BinaryIO, sha: Any, blocks: list[bytes]) -> None:
    for data in blocks:
        f.write(data)
        if sha is not None:
            sha.update(data)


async def _append_body(request: web.Request, upload: _Upload, name: str) -> int:
    """Stream the request body onto the end of the upload; all or nothing."""
    content_range = request.headers.get("Content-Range")
    expected = request.content_length
    if content_range is not None:
        m = _CONTENT_RANGE_RE.match(content_range.strip())
        if m is None:
            raise RegistryError(
                400,
                "BLOB_UPLOAD_INVALID",
                "Content-Range must be <start>-<end>",
                detail={"Content-Range": content_range},
            )
        start, end = int(m.group(1)), int(m.group(2))
        if start != upload.size or end < start:
            raise RegistryError(
                416,
                "BLOB_UPLOAD_INVALID",
                f"chunk starts at {start}, the upload holds {upload.size} bytes",
                headers=_upload_headers(name, upload),
            )
        length = end - start + 1
        if expected is not None and expected != length:
            raise RegistryError(
                400,
                "BLOB_UPLOAD_INVALID",
                f"Content-Range covers {length} bytes, Content-Length says {expected}",
            )
        expected = length
    start_size = upload.size
    sha_before = upload.sha.copy() if upload.sha is not None else None
    f = await asyncio.to_thread(open, upload.path, "r+b")
    received = 0
    try:
        f.seek(start_size)
        # Hash and write in a worker thread (both release the GIL) about 1 MiB at a
        # time, while the event loop keeps receiving; no copies of the chunks.
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in request.content.iter_chunked(_IO_BLOCK):
            received += len(chunk)
            if expected is not None and received > expected:
                raise RegistryError(400, "BLOB_UPLOAD_INVALID", "more bytes than announced")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _IO_BLOCK:
                await asyncio.to_thread(_write_blocks, f, upload.sha, pending)
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(_write_blocks, f, upload.sha, pending)
        if expected is not None and received != expected:
            raise RegistryError(
                400,
                "BLOB_UPLOAD_INVALID",
                f"received {received} bytes, {expected} announced",
            )
        await asyncio.to_thread(f.flush)
    except BaseException:
        # Leave the session as it was before this request, so the client can retry it.
        with contextlib.suppress(OSError):
            f.truncate(start_size)
        upload.sha = sha_before
        upload.size = start_size
        raise
    finally:
        f.close()
    upload.size = start_size + received
    return received


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_IO_BLOCK):
            sha.update(block)
    return "sha256:" + sha.hexdigest()


async def _finish_upload(
    registry: Registry, upload: _Upload, name: str, digest: str
) -> web.Response:
    """Verify the session's bytes against ``digest`` and move them into ``blobs/``."""
    if upload.sha is not None:
        actual = "sha256:" + upload.sha.hexdigest()
    else:
        actual = await asyncio.to_thread(_hash_file, upload.path)
    if actual != digest:
        registry.drop_upload(upload)
        raise RegistryError(
            400,
            "DIGEST_INVALID",
            f"uploaded content hashes to {actual}, not {digest}",
            detail={"expected": digest, "actual": actual, "size": upload.size},
        )
    await asyncio.to_thread(upload.store.commit_upload, upload.upload_id, digest)
    registry.drop_upload(upload)
    return _blob_created(name, digest)


async def _post_upload(request: web.Request, name: str, upload: str) -> web.StreamResponse:
    if upload:
        raise RegistryError(
            405,
            "UNSUPPORTED",
            "POST goes to /blobs/uploads/",
            headers={"Allow": "GET, PATCH, PUT, DELETE"},
        )
    registry = request.app[REGISTRY_KEY]
    registry.repo(name)
    mount = request.query.get("mount")
    digest = request.query.get("digest")
    if mount is not None:
        if not is_valid_digest(mount):
            raise _digest_invalid(mount)
        source = request.query.get("from")
        repo = await registry.created(name)
        if repo.store.has_blob(mount):
            return _blob_created(name, mount)
        if source and is_valid_name(source):
            src = registry.repo(source)
            if src.store.exists() and await asyncio.to_thread(
                repo.store.mount_blob, src.store, mount
            ):
                return _blob_created(name, mount)
        # Not mountable: the spec says to start an ordinary upload session instead.
    if digest is not None:
        if not is_valid_digest(digest):
            raise _digest_invalid(digest)
        repo = await registry.created(name)
        session = await registry.new_upload(repo)
        async with session.lock:
            try:
                await _append_body(request, session, name)
            except BaseException:
                registry.drop_upload(session)
                raise
            return await _finish_upload(registry, session, name, digest)
    repo = await registry.created(name)
    session = await registry.new_upload(repo)
    return web.Response(status=202, headers=_upload_headers(name, session))


async def _patch_upload(request: web.Request, name: str, upload: str) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    repo = registry.existing(name)
    session = registry.upload(repo, upload)
    if session.lock.locked() and request.headers.get("Content-Range") is not None:
        # Another chunk is still being written: this one cannot start where it says.
        raise RegistryError(
            416,
            "BLOB_UPLOAD_INVALID",
            "another chunk of this upload is in progress",
            headers=_upload_headers(name, session),
        )
    async with session.lock:
        await _append_body(request, session, name)
    return web.Response(status=202, headers=_upload_headers(name, session))


async def _put_upload(request: web.Request, name: str, upload: str) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    repo = registry.existing(name)
    session = registry.upload(repo, upload)
    digest = request.query.get("digest")
    if digest is None or not is_valid_digest(digest):
        raise _digest_invalid(digest or "")
    async with session.lock:
        await _append_body(request, session, name)
        return await _finish_upload(registry, session, name, digest)


async def _get_upload(request: web.Request, name: str, upload: str) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    repo = registry.existing(name)
    session = registry.upload(repo, upload)
    return web.Response(status=204, headers=_upload_headers(name, session))


async def _delete_upload(request: web.Request, name: str, upload: str) -> web.StreamResponse:
    registry = request.app[REGISTRY_KEY]
    repo = registry.existing(name)
    session = registry.upload(repo, upload)
    async with session.lock:
        registry.drop_upload(session)
    return web.Response(status=204, headers=_API_HEADER)


_HANDLERS: dict[tuple[str, str], Callable[..., Awaitable[web.StreamResponse]]] = {
    ("ping", "GET"): _ping,
    ("ping", "HEAD"): _ping,
    ("catalog", "GET"): _catalog,
    ("tags", "GET"): _tags,
    ("manifest", "GET"): _get_manifest,
    ("manifest", "HEAD"): _get_manifest,
    ("manifest", "PUT"): _put_manifest,
    ("manifest", "DELETE"): _delete_manifest,
    ("blob", "GET"): _get_blob,
    ("blob", "HEAD"): _get_blob,
    ("upload", "POST"): _post_upload,
    ("upload", "PATCH"): _patch_upload,
    ("upload", "PUT"): _put_upload,
    ("upload", "GET"): _get_upload,
    ("upload", "DELETE"): _delete_upload,
    ("referrers", "GET"): _referrers,
}


# -- middleware: errors and the access log ------------------------------------------


@web.middleware
async def _errors_and_access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.monotonic()
    try:
        resp = await handler(request)
    except RegistryError as exc:
        resp = exc.response()
    except web.HTTPException as exc:
        resp = RegistryError(exc.status, "UNSUPPORTED", exc.reason).response()
    except OciError as exc:
        log.error("%s %s: %s", request.method, request.path, exc)
        resp = RegistryError(500, "UNKNOWN", f"repository storage is damaged: {exc}").response()
    except (ConnectionError, asyncio.CancelledError):
        _log_access(request, 499, started)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        resp = RegistryError(500, "UNKNOWN", "internal server error").response()
    _log_access(request, resp.status, started, resp)
    return resp


def _log_access(
    request: web.Request, status: int, started: float, resp: web.StreamResponse | None = None
) -> None:
    if isinstance(resp, _BlobResponse):
        sent = resp.sent
    elif resp is not None and request.method != "HEAD" and isinstance(resp, web.Response):
        sent = resp.content_length or 0
    else:
        sent = 0
    request.app[STATS_KEY].add(status, sent)
    if access_log.isEnabledFor(logging.INFO):
        rng = request.headers.get("Range")
        rng_text = "-" if rng is None else f'"{rng[:200]}{"..." if len(rng) > 200 else ""}"'
        aborted = " aborted" if isinstance(resp, _BlobResponse) and resp.aborted else ""
        access_log.info(
            '%s "%s %s" %d %d %s %.3fs%s',
            request.remote,
            request.method,
            quote(request.path_qs, safe="/:?=&@%+,;-._~"),
            status,
            sent,
            rng_text,
            time.monotonic() - started,
            aborted,
        )


# -- the application ----------------------------------------------------------------


#: Connections waiting to be accepted (aiohttp's default, 128, drops SYNs when a
#: thousand hosts connect in the same second; each drop costs the client 1 s or more).
LISTEN_BACKLOG = 4096


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit.

    Each client connection is a descriptor and each blob being sent one more; the
    common soft limit of 1024 would refuse connections at a few hundred hosts.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


#: Arguments for aiohttp's request handler: room for long Range headers.
HANDLER_ARGS: dict[str, Any] = {"max_field_size": MAX_RANGE_HEADER}


async def create_app(root: Path) -> web.Application:
    """The registry as an aiohttp application serving the layouts under ``root``.

    ``app[STATS_KEY]`` counts requests and body bytes; every request is logged on
    the ``chunkah.registry.access`` logger (INFO), so run it with
    ``web.AppRunner(app, access_log=None)`` (see :func:`run_server`).  Header
    fields up to :data:`MAX_RANGE_HEADER` bytes are accepted (long ``Range`` lists).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    app = web.Application(middlewares=[_errors_and_access_log], handler_args=HANDLER_ARGS)
    app[REGISTRY_KEY] = Registry(root)
    app[STATS_KEY] = AccessStats()
    app.router.add_route("*", "/v2/{tail:.*}", _dispatch)
    app.router.add_route("*", "/v2", _v2_redirect)
    return app


async def _v2_redirect(request: web.Request) -> web.StreamResponse:
    return await _ping(request)


async def run_server(
    root: Path,
    host: str,
    port: int,
    *,
    ready: Callable[[str, int], object] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or the task is cancelled.

    ``ready(host, port)`` is called once the socket listens (``port`` is the one
    bound, useful with ``port=0``).
    """
    app = await create_app(root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # A fleet connects in bursts: the kernel caps the backlog at somaxconn anyway.
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
        await site.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("serving %s on http://%s:%d/v2/", root, host, bound)
        if ready is not None:
            ready(host, bound)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def serve(
    root: Path,
    host: str,
    port: int,
    *,
    ready: Callable[[str, int], object] | None = None,
) -> None:
    """Run the registry until SIGINT/SIGTERM (or cancellation); blocks.

    Signal handlers are installed only when called from the main thread.
    """

    raise_open_file_limit()

    async def main() -> None:
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await run_server(root, host, port, ready=ready, stop=stop)

    asyncio.run(main())
