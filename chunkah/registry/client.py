"""An async client of the OCI distribution API (aiohttp): manifests, blobs, uploads.

:class:`RegistryClient` owns one ``aiohttp.ClientSession``.  Every request goes
through :meth:`RegistryClient._send`, which

- attaches ``Authorization`` only to requests for the registry's own origin (a
  cached Bearer token for the request's scope, or Basic credentials), answers a 401
  challenge once by fetching a token, and
- follows redirects itself (at most :data:`MAX_REDIRECTS`), so a blob URL that
  redirects to a CDN or S3 never receives the registry's credentials.

Requests whose answer is small (manifests, HEAD, uploads) are retried by
:meth:`RegistryClient._call` under a :class:`RetryPolicy`; streamed blob downloads
resume with a ``Range`` after a broken connection (:meth:`download_blob`), and
:class:`chunkah.registry.fetcher.RangeFetcher` runs range requests on top of
:meth:`open_blob`.  All traffic is counted in :class:`TransferStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from chunkah import oci
from chunkah.oci import media_types as mt

from .auth import (
    Challenge,
    Credentials,
    TokenCache,
    basic_authorization,
    load_credentials,
    parse_challenges,
    repository_scope,
)
from .errors import (
    RegistryAuthError,
    RegistryDigestError,
    RegistryNotFoundError,
    RegistryRequestError,
)
from .ranges import parse_content_range
from .reference import RegistryReference, parse_registry_reference
from .retry import RetryPolicy, Timeouts, is_retryable_status, parse_retry_after

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "MAX_REDIRECTS",
    "BlobSink",
    "FetchedManifest",
    "RegistryClient",
    "RemoteImage",
    "TransferStats",
    "pick_platform",
]

MANIFEST_MEDIA_TYPES = (mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
MAX_REDIRECTS = 5
#: Error bodies and token responses are read up to this size.
MAX_SMALL_BODY = 1 << 20
MAX_INDEX_DEPTH = 8
_READ_BUF = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)
#: What a transport failure looks like from aiohttp (resets, truncation, timeouts).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass
class TransferStats:
    """Counters of everything that went over the wire (response bodies as read)."""

    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    blob_requests: int = 0
    blob_bytes: int = 0  #: body bytes of blob GETs, multipart framing included
    range_requests: int = 0
    ranges_requested: int = 0  #: spans asked for, over all range requests
    whole_downloads: int = 0
    fallbacks: int = 0  #: blobs switched from ranges to one whole download
    halvings: int = 0
    retries: int = 0
    redirects: int = 0
    auth_tokens: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status_counts"] = {str(k): v for k, v in sorted(self.status_counts.items())}
        return out


class BlobSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index as the registry sent it, verified against ``digest``."""

    media_type: str
    digest: str
    body: bytes

    @property
    def descriptor(self) -> oci.Descriptor:
        return oci.Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.body))


@dataclass(frozen=True)
class RemoteImage:
    """An image in a registry, resolved to one platform's manifest and its config."""

    reference: RegistryReference  #: with ``digest`` set to the manifest's
    descriptor: oci.Descriptor  #: of the manifest
    manifest: oci.Manifest
    manifest_bytes: bytes
    config: oci.ImageConfig | None  #: None for artifacts (non-image config types)
    config_bytes: bytes
    index: FetchedManifest | None = None  #: the index it was chosen from, if any

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def layers(self) -> tuple[oci.Descriptor, ...]:
        return self.manifest.layers


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


def _widen_reads(resp: aiohttp.ClientResponse, size: int) -> Callable[[], None]:
    """Let asyncio's socket transport ``recv()`` up to ``size`` bytes at a time.

    Its default is 256 KiB; a whole download with 1 MiB reads makes a quarter of the
    reads, parser callbacks and buffer joins (a quarter less CPU per byte over
    loopback, bench_registry.py).  Larger reads cost more: their buffers come fresh
    from mmap and page-fault.  Returns the function that puts the old value back
    for the connection's next request.  Transports without the attribute (TLS,
    uvloop) are left alone.
    """
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    old = getattr(transport, "max_size", None)
    if transport is None or not isinstance(old, int) or old >= size:
        return lambda: None
    try:
        transport.max_size = size  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(AttributeError, TypeError):
            transport.max_size = old  # type: ignore[attr-defined]

    return restore


class _RetryableStatus(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = retry_after


def _platform_matches(have: oci.Platform | None, want: oci.Platform) -> bool:
    if have is None or have.os != want.os or have.architecture != want.architecture:
        return False
    if want.variant is None:
        return True

    def norm(v: str | None) -> str | None:  # arm64 without a variant means v8
        return None if have.architecture == "arm64" and v == "v8" else v

    return norm(have.variant) == norm(want.variant)


def pick_platform(
    candidates: Sequence[oci.Descriptor], want: oci.Platform, where: str
) -> oci.Descriptor:
    """The index entry for ``want`` (the same rules as ``chunkah.oci.select_manifest``)."""
    matches = [d for d in candidates if _platform_matches(d.platform, want)]
    if not matches:
        have = ", ".join(str(d.platform) for d in candidates if d.platform) or "none declared"
        raise oci.PlatformNotFoundError(
            f"{where}: no image for {want} (available: {have}); pick one with --arch"
        )
    exact = [d for d in matches if d.platform and d.platform.variant == want.variant]
    return (exact or matches)[0]


def _guess_media_type(body: bytes, header: str | None) -> str:
    ctype = (header or "").split(";")[0].strip()
    if ctype in mt.MANIFEST_TYPES or ctype in mt.INDEX_TYPES:
        return ctype
    try:
        obj = json.loads(body)
    except ValueError:
        raise oci.InvalidImageError("the registry sent a manifest that is not JSON") from None
    kind = obj.get("mediaType") if isinstance(obj, dict) else None
    if isinstance(kind, str) and (kind in mt.MANIFEST_TYPES or kind in mt.INDEX_TYPES):
        return kind
    if isinstance(obj, dict) and "manifests" in obj:
        return mt.OCI_INDEX
    return mt.OCI_MANIFEST


def _error_detail(status: int, body: bytes) -> str:
    """``503 Service Unavailable: UNAVAILABLE: ...`` from the spec's error JSON, if any."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            e = errors[0]
            return f"{status} {e.get('code', '')}: {e.get('message', '')}".strip()
    except ValueError:
        pass
    text = body[:200].decode("utf-8", "replace").strip()
    return f"{status} {text}" if text else str(status)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _hasher(digest: str) -> Any:
    alg, _ = oci.parse_digest(digest)
    return hashlib.new(alg)


def _compute_digest(digest_like: str, body: bytes) -> str:
    h = _hasher(digest_like)
    h.update(body)
    return f"{h.name}:{h.hexdigest()}"


# An upload body: bytes, or a factory of a fresh stream (so a retry can resend it).
UploadBody = bytes | Callable[[], BinaryIO]


async def _stream_body(
    factory: Callable[[], BinaryIO], stats: TransferStats
) -> AsyncIterator[bytes]:
    f = factory()
    try:
        while chunk := f.read(_READ_BUF):
            stats.bytes_sent += len(chunk)
            yield chunk
    finally:
        f.close()


class RegistryClient:
    """A client for one or more registries; use as ``async with RegistryClient() as c``.

    ``plain_http`` talks HTTP instead of HTTPS; ``tls_verify=False`` accepts any
    certificate and, like skopeo, falls back to plain HTTP when the server does not
    speak TLS.  ``credentials`` maps a registry (``host[:port]``) to
    :class:`Credentials`; registries not in it are looked up in the auth files
    (``auth_files=False`` disables that).  ``stats`` collects every byte and request.
    """

    def __init__(
        self,
        *,
        plain_http: bool = False,
        tls_verify: bool = True,
        credentials: Mapping[str, Credentials] | None = None,
        auth_files: bool = True,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        connection_limit: int = 16,
        user_agent: str = "chunkah",
        stats: TransferStats | None = None,
    ) -> None:
        self.plain_http = plain_http
        self.tls_verify = tls_verify
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.stats = stats if stats is not None else TransferStats()
        self._credentials = dict(credentials or {})
        self._auth_files = auth_files
        self._connection_limit = connection_limit
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._tokens = TokenCache()
        self._challenges: dict[str, Challenge] = {}
        self._schemes: dict[str, str] = {}
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- lifecycle --
    async def __aenter__(self) -> RegistryClient:
        connector = aiohttp.TCPConnector(limit=self._connection_limit, ssl=self.tls_verify)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # blob bytes exactly as stored; ranges are of those
            read_bufsize=_READ_BUF,
            headers={"User-Agent": self._user_agent},
            timeout=aiohttp.ClientTimeout(
                total=self.timeouts.request,
                sock_connect=self.timeouts.connect,
                sock_read=self.timeouts.idle,
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use RegistryClient as 'async with RegistryClient() as client'")
        return self._session

    # -- URLs --
    def _scheme(self, registry: str) -> str:
        if registry in self._schemes:
            return self._schemes[registry]
        return "http" if self.plain_http else "https"

    def base_url(self, ref: RegistryReference) -> URL:
        return URL(f"{self._scheme(ref.registry)}://{ref.endpoint}")

    def _url(self, ref: RegistryReference, *parts: str) -> URL:
        return URL(f"{self.base_url(ref)}/v2/{ref.repository}/{'/'.join(parts)}", encoded=True)

    # -- auth --
    def credentials_for(self, ref: RegistryReference) -> Credentials | None:
        if ref.registry in self._credentials:
            return self._credentials[ref.registry]
        if not self._auth_files:
            return None
        return load_credentials(ref.registry, ref.repository)

    def _authorization(self, ref: RegistryReference, origin: str, scope: str | None) -> str | None:
        ch = self._challenges.get(origin)
        if ch is None:
            return None
        creds = self.credentials_for(ref)
        if ch.scheme == "basic":
            return basic_authorization(creds) if creds else None
        if ch.scheme == "bearer" and ch.realm:
            token = self._tokens.get(ch.realm, ch.params.get("service", ""), scope or "")
            return f"Bearer {token}" if token else None
        return None

    async def _answer_challenge(
        self, resp: aiohttp.ClientResponse, ref: RegistryReference, origin: str, scope: str | None
    ) -> bool:
        """Learn the challenge of a 401 and get what it asks for; True to try again."""
        try:
            challenges = [
                c for h in resp.headers.getall("WWW-Authenticate", []) for c in parse_challenges(h)
            ]
        except ValueError:
            return False
        by_scheme = {c.scheme: c for c in challenges}
        ch = by_scheme.get("bearer") or by_scheme.get("basic")
        if ch is None:
            return False
        self._challenges[origin] = ch
        creds = self.credentials_for(ref)
        if ch.scheme == "basic":
            return creds is not None and basic_authorization(creds) is not None
        if not ch.realm:
            return False
        service = ch.params.get("service", "")
        key = scope or ""
        lock = self._token_locks.setdefault((ch.realm, key), asyncio.Lock())
        async with lock:
            # A stale cached token is what got the 401: drop it and ask once more.
            self._tokens.drop(ch.realm, service, key)
            scopes = [s for s in key.split(" ") if s]
            asked = ch.params.get("scope")
            if asked and asked not in scopes:
                scopes.append(asked)
            token, expires_in = await self._fetch_token(ref, ch, scopes, creds)
            self._tokens.put(ch.realm, service, key, token, expires_in)
        return True

    async def _fetch_token(
        self,
        ref: RegistryReference,
        ch: Challenge,
        scopes: Sequence[str],
        creds: Credentials | None,
    ) -> tuple[str, float]:
        assert ch.realm is not None
        realm = URL(ch.realm)
        if creds is not None and creds.registry_token:
            return creds.registry_token, 3600.0
        # Credentials go to the token server only over TLS, or to the registry's own host.
        may_send = realm.scheme == "https" or realm.host == URL(f"x://{ref.endpoint}").host
        service = ch.params.get("service")
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        method, form = "GET", None
        if creds is not None and may_send and creds.identity_token:
            method = "POST"
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": "chunkah",
                "scope": " ".join(scopes),
                **({"service": service} if service else {}),
            }
            params = []
        elif creds is not None and may_send and (basic := basic_authorization(creds)):
            headers["Authorization"] = basic
        url = realm.update_query(params) if params else realm
        last = ""
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                self.stats.requests += 1
                async with self.session.request(
                    method, url, headers=headers, data=form, allow_redirects=True
                ) as resp:
                    self._count_status(resp.status)
                    body = await self._read_small(resp, MAX_SMALL_BODY, "token response")
                    if resp.status == 200:
                        try:
                            doc = json.loads(body)
                            token = doc.get("token") or doc.get("access_token")
                            expires = float(doc.get("expires_in") or 60)
                        except (ValueError, AttributeError, TypeError):
                            token = None
                        if not isinstance(token, str) or not token:
                            raise RegistryAuthError(
                                f"token server {realm} sent no token for {' '.join(scopes)}"
                            )
                        self.stats.auth_tokens += 1
                        return token, expires
                    detail = _error_detail(resp.status, body)
                    if not is_retryable_status(resp.status):
                        raise RegistryAuthError(
                            f"token server {realm} refused {' '.join(scopes) or 'access'}: "
                            f"{detail}"
                            + (
                                ""
                                if creds
                                else " (no credentials found; log in with "
                                "podman/skopeo/docker login)"
                            ),
                            status=resp.status,
                        )
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    last = detail
            except TRANSPORT_ERRORS as exc:
                last = _describe(exc)
            if attempt < self.retry.attempts:
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise RegistryRequestError(
            f"{method} {realm} (token) failed after {self.retry.attempts} attempts: {last}",
            attempts=self.retry.attempts,
        )

    # -- the request core --
    def _count_status(self, status: int) -> None:
        self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1

    async def _send(
        self,
        method: str,
        url: URL,
        ref: RegistryReference,
        *,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        data: UploadBody | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """One attempt: auth (one answered challenge) and redirects; the caller closes."""
        origin = str(self.base_url(ref).origin())
        answered = False
        hops = 0
        while True:
            h = dict(headers or {})
            same_origin = str(url.origin()) == origin
            if same_origin and (authz := self._authorization(ref, origin, scope)):
                h["Authorization"] = authz
            body: Any = data
            if callable(data):
                body = _stream_body(data, self.stats)
            elif isinstance(data, bytes):
                self.stats.bytes_sent += len(data)
            self.stats.requests += 1
            try:
                resp = await self.session.request(
                    method,
                    url,
                    headers=h,
                    data=body,
                    allow_redirects=False,
                    timeout=timeout if timeout is not None else self.session.timeout,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as exc:
                if self._try_plain_http(ref, url, exc):
                    url = url.with_scheme("http")
                    origin = str(self.base_url(ref).origin())
                    continue
                raise
            self._count_status(resp.status)
            if resp.status == 401 and same_origin and not answered:
                resp.close()
                if await self._answer_challenge(resp, ref, origin, scope):
                    answered = True
                    continue
                return resp
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                resp.close()
                hops += 1
                if not location or hops > MAX_REDIRECTS:
                    raise RegistryRequestError(
                        f"{method} {url}: {'too many redirects' if location else 'redirect without Location'}",
                        status=resp.status,
                    )
                if callable(data):
                    raise RegistryRequestError(
                        f"{method} {url}: redirected an upload stream to {location}; not resent"
                    )
                self.stats.redirects += 1
                url = url.join(URL(location, encoded=True))
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, data = "GET", None
                continue
            return resp

    def _try_plain_http(self, ref: RegistryReference, url: URL, exc: BaseException) -> bool:
        """``tls_verify=False``: a server that does not speak TLS is asked over HTTP."""
        if self.tls_verify or url.scheme != "https" or self._schemes.get(ref.registry) == "http":
            return False
        if str(url.origin()) != str(self.base_url(ref).origin()):
            return False
        text = f"{exc} {getattr(exc, 'os_error', '')}".lower()
        if "ssl" not in text and "wrong version" not in text and "record" not in text:
            return False
        self._schemes[ref.registry] = "http"
        return True

    async def _read_small(self, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        length = resp.content_length
        if length is not None and length > limit:
            raise oci.InvalidImageError(
                f"{what} from {resp.url} is {length} bytes, above the {limit}-byte limit"
            )
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            buf += chunk
            self.stats.bytes_received += len(chunk)
            if len(buf) > limit:
                raise oci.InvalidImageError(
                    f"{what} from {resp.url} is larger than the {limit}-byte limit"
                )
        return bytes(buf)

    def _status_error(
        self, method: str, url: URL, status: int, detail: str, attempts: int
    ) -> Exception:
        what = f"{method} {url}"
        if status == 404:
            return RegistryNotFoundError(f"{what}: not found ({detail})")
        if status in (401, 403):
            return RegistryAuthError(
                f"{what}: access denied ({detail}); check credentials (podman/skopeo/docker "
                "login) and the repository name",
                status=status,
                attempts=attempts,
            )
        return RegistryRequestError(f"{what} failed: {detail}", status=status, attempts=attempts)

    async def _call(
        self,
        method: str,
        url: URL,
        ref: RegistryReference,
        *,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        data: UploadBody | None = None,
        ok: Iterable[int] = (200,),
        max_body: int = MAX_SMALL_BODY,
        what: str = "response",
    ) -> _Reply:
        """A request with a small answer, retried under the policy; non-``ok`` raises."""
        ok = tuple(ok)
        last, status = "", None
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                resp = await self._send(method, url, ref, scope=scope, headers=headers, data=data)
                try:
                    status = resp.status
                    if status in ok:
                        body = (
                            b""
                            if method == "HEAD"
                            else await self._read_small(resp, max_body, what)
                        )
                        return _Reply(status, resp.headers, body, resp.url)
                    body = (
                        b""
                        if method == "HEAD" or status == 416
                        else await self._read_small(resp, MAX_SMALL_BODY, "error body")
                    )
                    detail = _error_detail(status, body)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                finally:
                    resp.close()
                if not is_retryable_status(status):
                    raise self._status_error(method, url, status, detail, attempt)
                last = detail
            except TRANSPORT_ERRORS as exc:
                last, status = _describe(exc), None
            if attempt < attempts:
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise RegistryRequestError(
            f"{method} {url} failed after {attempts} attempts: {last}",
            status=status,
            attempts=attempts,
        )

    # -- API --
    async def ping(self, ref: RegistryReference | str) -> None:
        """``GET /v2/``: reachable and speaking the API (auth challenges answered)."""
        ref = _as_ref(ref)
        await self._call("GET", self.base_url(ref) / "v2" / "", ref, scope=None)

    async def list_tags(self, ref: RegistryReference | str) -> list[str]:
        """All tags of the repository (following ``Link`` pagination)."""
        ref = _as_ref(ref)
        url: URL | None = self._url(ref, "tags", "list")
        tags: list[str] = []
        for _page in range(1000):
            if url is None:
                break
            reply = await self._call("GET", url, ref, scope=_pull(ref), what="tag list")
            try:
                doc = json.loads(reply.body)
                tags += [t for t in doc.get("tags") or [] if isinstance(t, str)]
            except (ValueError, AttributeError):
                raise oci.InvalidImageError(f"{url}: tag list is not JSON") from None
            link = reply.headers.get("Link")
            url = url.join(URL(link.split(";")[0].strip(" <>"), encoded=True)) if link else None
        return tags

    async def referrers(
        self,
        ref: RegistryReference | str,
        digest: str,
        *,
        artifact_type: str | None = None,
        fallback: bool = True,
    ) -> list[oci.Descriptor] | None:
        """The OCI 1.1 referrers of manifest ``digest`` in ``ref``'s repository.

        The referrers API (``GET /v2/NAME/referrers/DIGEST``) where the registry has
        it; else, with ``fallback``, the image index tagged ``sha256-HEX`` (the
        distribution spec's referrers tag schema; none: an empty list).  Without
        ``fallback`` a registry lacking the API gives None.  Filtered by
        ``artifact_type`` (the descriptors' ``artifactType``) when given.
        """
        ref = _as_ref(ref)
        oci.parse_digest(digest)
        url = self._url(ref, "referrers", digest)
        if artifact_type:
            url = url.with_query(artifactType=artifact_type)
        found: list[oci.Descriptor] | None = None
        try:
            reply = await self._call(
                "GET", url, ref, scope=_pull(ref), headers={"Accept": mt.OCI_INDEX},
                max_body=oci.MAX_MANIFEST_SIZE, what="referrers",
            )  # fmt: skip
            found = list(oci.Index.from_json(reply.body, mt.OCI_INDEX).manifests)
        except RegistryNotFoundError:
            pass  # distribution 2.8 and other registries without the API
        except RegistryRequestError as exc:
            if exc.status not in (400, 405, 406):
                raise
        except oci.InvalidImageError:
            pass  # a 200 that is not an index: no API worth the name
        if found is None:
            if not fallback:
                return None
            alg, _, hexpart = digest.partition(":")
            try:
                listing = await self.get_manifest(
                    ref.with_tag(f"{alg}-{hexpart}"[:128]), accept=(mt.OCI_INDEX,)
                )
            except RegistryNotFoundError:
                return []
            found = list(oci.Index.from_json(listing.body, listing.media_type).manifests)
        if artifact_type is not None:
            found = [d for d in found if d.extra.get("artifactType") == artifact_type]
        return found

    async def get_manifest(
        self,
        ref: RegistryReference | str,
        *,
        accept: Sequence[str] = MANIFEST_MEDIA_TYPES,
    ) -> FetchedManifest:
        """The manifest or index named by ``ref`` (tag or digest), verified.

        By digest the body must hash to it; by tag a ``Docker-Content-Digest`` header,
        when sent, must match the body.  Bodies above 4 MiB are refused.
        """
        ref = _as_ref(ref)
        url = self._url(ref, "manifests", ref.reference)
        reply = await self._call(
            "GET",
            url,
            ref,
            scope=_pull(ref),
            headers={"Accept": ", ".join(accept)},
            max_body=oci.MAX_MANIFEST_SIZE,
            what="manifest",
        )
        body = reply.body
        if ref.digest:
            digest = _compute_digest(ref.digest, body)
            if digest != ref.digest:
                raise RegistryDigestError(
                    f"{ref}: the registry sent a manifest that hashes to {digest}"
                )
        else:
            digest = oci.sha256_digest(body)
            claimed = reply.headers.get("Docker-Content-Digest")
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise RegistryDigestError(
                    f"{ref}: manifest hashes to {digest} but the registry says {claimed}"
                )
        return FetchedManifest(
            _guess_media_type(body, reply.headers.get("Content-Type")), digest, body
        )

    async def resolve(
        self, ref: RegistryReference | str, platform: oci.Platform | None = None
    ) -> RemoteImage:
        """Manifest (choosing ``platform`` from an index, default the host's) and config."""
        ref = _as_ref(ref)
        fetched = await self.get_manifest(ref)
        parent: FetchedManifest | None = None
        seen = {fetched.digest}
        for _depth in range(MAX_INDEX_DEPTH):
            if fetched.media_type in mt.INDEX_TYPES:
                index = oci.Index.from_json(fetched.body, fetched.media_type)
                if not index.manifests:
                    raise oci.ImageNotFoundError(f"{ref}: index {fetched.digest} is empty")
                want = platform or oci.host_platform()
                chosen = pick_platform(index.manifests, want, str(ref))
                if chosen.digest in seen:
                    raise oci.InvalidImageError(
                        f"{ref}: index {fetched.digest} refers back to itself"
                    )
                seen.add(chosen.digest)
                parent = fetched
                fetched = await self.get_manifest(ref.with_digest(chosen.digest))
                if len(fetched.body) != chosen.size:
                    raise RegistryDigestError(
                        f"{ref}: manifest {chosen.digest} is {len(fetched.body)} bytes, "
                        f"the index says {chosen.size}"
                    )
                continue
            manifest = oci.Manifest.from_json(fetched.body, fetched.media_type)
            config_bytes = await self.get_blob_bytes(
                ref, manifest.config, max_size=oci.MAX_CONFIG_SIZE
            )
            config = (
                oci.ImageConfig.from_json(config_bytes)
                if manifest.config.media_type in mt.CONFIG_TYPES
                else None
            )
            return RemoteImage(
                reference=ref.with_digest(fetched.digest),
                descriptor=fetched.descriptor,
                manifest=manifest,
                manifest_bytes=fetched.body,
                config=config,
                config_bytes=config_bytes,
                index=parent,
            )
        raise oci.InvalidImageError(f"{ref}: image indexes nested too deeply")

    # -- blobs: reading --
    def blob_url(self, ref: RegistryReference, digest: str) -> URL:
        oci.parse_digest(digest)
        return self._url(ref, "blobs", digest)

    async def blob_size(self, ref: RegistryReference | str, digest: str) -> int | None:
        """HEAD the blob: its size, or None when the registry does not have it."""
        ref = _as_ref(ref)
        try:
            reply = await self._call("HEAD", self.blob_url(ref, digest), ref, scope=_pull(ref))
        except RegistryNotFoundError:
            return None
        length = reply.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else -1

    async def blob_exists(self, ref: RegistryReference | str, digest: str) -> bool:
        return await self.blob_size(ref, digest) is not None

    async def get_blob_bytes(
        self, ref: RegistryReference | str, desc: oci.Descriptor, *, max_size: int
    ) -> bytes:
        """A small blob (config, TOC) in memory, verified against ``desc``."""
        ref = _as_ref(ref)
        if desc.size > max_size:
            raise oci.InvalidImageError(
                f"{desc.media_type} {desc.digest} is {desc.size} bytes, above the "
                f"{max_size}-byte limit for such documents"
            )
        sink = io.BytesIO()
        await self.download_blob(ref, desc.digest, sink, size=desc.size)
        return sink.getvalue()

    def blob_timeout(self, whole: bool) -> aiohttp.ClientTimeout:
        """Idle timeout always; the per-request limit except for whole downloads."""
        return aiohttp.ClientTimeout(
            total=None if whole else self.timeouts.request,
            sock_connect=self.timeouts.connect,
            sock_read=self.timeouts.idle,
        )

    async def open_blob(
        self,
        ref: RegistryReference,
        digest: str,
        headers: Mapping[str, str] | None = None,
        *,
        whole: bool = False,
    ) -> aiohttp.ClientResponse:
        """One GET of a blob (redirects followed, auth answered, not retried).

        The caller reads and closes the response.  ``Accept-Encoding: identity``
        keeps byte offsets those of the stored blob.
        """
        h = {"Accept-Encoding": "identity", **(headers or {})}
        self.stats.blob_requests += 1
        return await self._send(
            "GET",
            self.blob_url(ref, digest),
            ref,
            scope=_pull(ref),
            headers=h,
            timeout=self.blob_timeout(whole),
        )

    async def download_blob(
        self,
        ref: RegistryReference | str,
        digest: str,
        sink: BlobSink,
        *,
        size: int | None = None,
        first_response: aiohttp.ClientResponse | None = None,
    ) -> int:
        """Stream a whole blob into ``sink`` and verify its digest (and size); returns size.

        A broken stream is resumed with ``Range: bytes=N-`` (a server that ignores
        the Range gets its first N bytes skipped), at most ``retry.attempts`` tries.
        ``first_response`` is an open 200 answer to use as the first try (a range
        probe answered with the whole blob).  Nothing is written beyond ``size``.
        """
        ref = _as_ref(ref)
        url = self.blob_url(ref, digest)
        h = _hasher(digest)
        got = 0
        resp = first_response
        attempts = self.retry.attempts
        self.stats.whole_downloads += 1
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                if resp is None:
                    headers = {"Range": f"bytes={got}-"} if got else {}
                    resp = await self.open_blob(ref, digest, headers, whole=True)
                restore_reads = _widen_reads(resp, _READ_BUF)
                try:
                    skip = self._check_whole_answer(resp, url, got, size, attempt)
                    async for chunk in resp.content.iter_any():
                        n = len(chunk)
                        self.stats.bytes_received += n
                        self.stats.blob_bytes += n
                        if skip:
                            drop = min(skip, n)
                            chunk, skip = chunk[drop:], skip - drop
                            n -= drop
                            if not n:
                                continue
                        if size is not None and got + n > size:
                            raise RegistryDigestError(
                                f"blob {digest}: the registry sent more than the {size} bytes "
                                "its descriptor declares"
                            )
                        # Hashed and written here, not in a worker thread: on a machine
                        # whose cores are busy (the server, other work) the hand-off
                        # costs more CPU than it overlaps (bench_registry.py).
                        h.update(chunk)
                        sink.write(chunk)
                        got += n
                finally:
                    restore_reads()
                    resp.close()
                    resp = None
                break
            except _RetryableStatus as exc:
                last, retry_after = str(exc), exc.retry_after
            except TRANSPORT_ERRORS as exc:
                last = _describe(exc)
            if attempt == attempts:
                raise RegistryRequestError(
                    f"GET {url} failed after {attempts} attempts: {last} "
                    f"({got} of {size if size is not None else '?'} bytes received)",
                    attempts=attempts,
                )
            self.stats.retries += 1
            await asyncio.sleep(self.retry.delay(attempt, retry_after))
        if size is not None and got != size:
            raise RegistryDigestError(f"blob {digest}: got {got} bytes, its descriptor says {size}")
        actual = f"{h.name}:{h.hexdigest()}"
        if actual != digest:
            raise RegistryDigestError(
                f"blob {digest}: the bytes received hash to {actual}; corrupt in transit or "
                "tampered with"
            )
        return got

    def _check_whole_answer(
        self, resp: aiohttp.ClientResponse, url: URL, got: int, size: int | None, attempt: int
    ) -> int:
        """How many leading bytes of this answer to skip; raises for unusable answers."""
        status = resp.status
        if status == 200:
            if size is not None and resp.content_length not in (None, size):
                raise RegistryDigestError(
                    f"GET {url}: Content-Length {resp.content_length}, expected {size}"
                )
            return got
        if status == 206 and got:
            cr = resp.headers.get("Content-Range", "")
            try:
                parsed = parse_content_range(cr)
            except ValueError:
                parsed = None
            if (
                parsed is None
                or parsed.span is None
                or parsed.span.start != got
                or (
                    size is not None
                    and (parsed.total not in (None, size) or parsed.span.end != size)
                )
            ):
                raise RegistryRequestError(f"GET {url}: resumed with a wrong Content-Range {cr!r}")
            return 0
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if is_retryable_status(status):
            raise _RetryableStatus(status, f"{status} {resp.reason or ''}".strip(), retry_after)
        raise self._status_error(
            "GET", url, status, f"{status} {resp.reason or ''}".strip(), attempt
        )

    # -- blobs: writing --
    async def mount_blob(
        self, ref: RegistryReference | str, digest: str, from_repository: str
    ) -> bool:
        """Cross-repository mount; True if mounted, False if the registry declined."""
        ref = _as_ref(ref)
        url = self._url(ref, "blobs", "uploads", "").update_query(
            mount=digest, **{"from": from_repository}
        )
        scope = f"{_push(ref)} {repository_scope(from_repository)}"
        reply = await self._call("POST", url, ref, scope=scope, ok=(201, 202), what="mount")
        if reply.status == 202:
            # An upload session was opened instead; cancel it (best effort).
            location = reply.headers.get("Location")
            if location:
                with contextlib.suppress(RegistryRequestError):
                    await self._call(
                        "DELETE",
                        url.join(URL(location, encoded=True)),
                        ref,
                        scope=_push(ref),
                        ok=(200, 202, 204, 404),
                    )
            return False
        return True

    async def _start_upload(self, ref: RegistryReference) -> URL:
        url = self._url(ref, "blobs", "uploads", "")
        reply = await self._call("POST", url, ref, scope=_push(ref), ok=(202,), what="upload start")
        return self._location(reply, url)

    def _location(self, reply: _Reply, base: URL) -> URL:
        location = reply.headers.get("Location")
        if not location:
            raise RegistryRequestError(f"{base}: upload answer without Location")
        return base.join(URL(location, encoded=True))

    async def upload_blob(
        self,
        ref: RegistryReference | str,
        source: bytes | Path | Callable[[], BinaryIO],
        *,
        digest: str | None = None,
        size: int | None = None,
        chunk_size: int | None = None,
        mount_from: str | None = None,
        single_post: bool = False,
    ) -> oci.Descriptor:
        """Upload a blob unless the registry has it; returns its (digest, size) descriptor.

        ``source`` is bytes, a file, or a factory of fresh streams (give ``digest`` and
        ``size`` then).  Monolithic by default (POST, then PUT with the body);
        ``single_post`` tries the one-request ``POST ?digest=``; ``chunk_size`` uses
        PATCH chunks with ``Content-Range``; ``mount_from`` first tries a
        cross-repository mount.
        """
        ref = _as_ref(ref)
        if isinstance(source, bytes):
            digest = digest or oci.sha256_digest(source)
            size = len(source)
        elif isinstance(source, Path):
            path = source
            size = path.stat().st_size
            if digest is None:
                digest = await asyncio.to_thread(_file_digest, path)
            source = lambda: path.open("rb")  # noqa: E731
        elif digest is None or size is None:
            raise ValueError("a stream upload needs digest and size")
        assert digest is not None and size is not None
        desc = oci.Descriptor(mt.OCI_LAYER_TAR, digest, size)  # media type is the caller's
        if await self.blob_exists(ref, digest):
            return desc
        if mount_from and await self.mount_blob(ref, digest, mount_from):
            return desc
        if single_post and isinstance(source, bytes):
            url = self._url(ref, "blobs", "uploads", "").update_query(digest=digest)
            reply = await self._call(
                "POST",
                url,
                ref,
                scope=_push(ref),
                data=source,
                headers={"Content-Type": "application/octet-stream"},
                ok=(201, 202),
            )
            if reply.status == 201:
                self._check_digest_header(reply, digest, url)
                return desc
            location = self._location(reply, url)
        else:
            location = await self._start_upload(ref)
        if chunk_size:
            location = await self._upload_chunks(ref, location, source, size, chunk_size)
            body: UploadBody | None = None
        else:
            body = source
        put = location.extend_query(digest=digest)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(0 if body is None else size),
        }
        reply = await self._call(
            "PUT", put, ref, scope=_push(ref), data=body, headers=headers, ok=(201,)
        )
        self._check_digest_header(reply, digest, put)
        return desc

    async def _upload_chunks(
        self,
        ref: RegistryReference,
        location: URL,
        source: UploadBody,
        size: int,
        chunk_size: int,
    ) -> URL:
        stream = None if isinstance(source, bytes) else source()
        try:
            offset = 0
            while offset < size:
                n = min(chunk_size, size - offset)
                if isinstance(source, bytes):
                    chunk = source[offset : offset + n]
                else:
                    assert stream is not None
                    chunk = stream.read(n)
                    if len(chunk) != n:
                        raise RegistryRequestError(
                            f"upload source ended at {offset + len(chunk)} of {size} bytes"
                        )
                reply = await self._call(
                    "PATCH",
                    location,
                    ref,
                    scope=_push(ref),
                    data=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Length": str(n),
                    },
                    ok=(202,),
                    what="upload chunk",
                )
                location = self._location(reply, location)
                rng = reply.headers.get("Range")
                if rng and rng != f"0-{offset + n - 1}":
                    raise RegistryRequestError(
                        f"PATCH {location}: the registry holds {rng!r}, expected 0-{offset + n - 1}"
                    )
                offset += n
        finally:
            if stream is not None:
                stream.close()
        return location

    def _check_digest_header(self, reply: _Reply, digest: str, url: URL) -> None:
        claimed = reply.headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise RegistryDigestError(f"PUT {url}: the registry stored {claimed}, we sent {digest}")

    async def put_manifest(self, ref: RegistryReference | str, body: bytes, media_type: str) -> str:
        """PUT a manifest or index under ``ref``'s tag (or digest); returns its digest."""
        ref = _as_ref(ref)
        digest = oci.sha256_digest(body)
        if ref.digest and ref.digest != digest:
            raise RegistryDigestError(f"{ref}: the manifest to push hashes to {digest}")
        url = self._url(ref, "manifests", ref.tag or digest if not ref.digest else ref.digest)
        reply = await self._call(
            "PUT",
            url,
            ref,
            scope=_push(ref),
            data=body,
            headers={"Content-Type": media_type},
            ok=(201,),
        )
        self._check_digest_header(reply, digest, url)
        return digest


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ_BUF):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _as_ref(ref: RegistryReference | str) -> RegistryReference:
    return ref if isinstance(ref, RegistryReference) else parse_registry_reference(ref)


def _pull(ref: RegistryReference) -> str:
    return repository_scope(ref.repository, ("pull",))


def _push(ref: RegistryReference) -> str:
    return repository_scope(ref.repository, ("pull", "push"))
