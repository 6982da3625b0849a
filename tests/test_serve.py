"""The embedded registry (``chunkah serve``) through aiohttp's client and raw sockets.

The server runs in-process on 127.0.0.1 in a thread with its own event loop, so the
file-descriptor checks see the server's descriptors.  ``ServerThread`` is imported
by the real-client tests (test_serve_clients.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from chunkah.oci import OciLayout, resolve_image
from chunkah.oci.reference import parse_reference
from chunkah.registry.server import STATS_KEY, AccessStats, create_app

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ServerThread:
    """``create_app(root)`` served on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.stats: AccessStats | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="chunkah-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("server did not start in 20 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "server thread did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = await create_app(self.root)
        self.stats = app[STATS_KEY]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("serve-root")).start()
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Resp:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        return str(self.json()["errors"][0]["code"])


async def _request(
    url: str, method: str, path: str, headers: dict[str, str] | None, data: bytes | None
) -> Resp:
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(url, timeout=timeout, auto_decompress=False) as s,
        s.request(method, path, headers=headers or {}, data=data, allow_redirects=False) as r,
    ):
        body = await r.read()
        return Resp(r.status, CIMultiDict(r.headers), body)


def call(
    srv: ServerThread,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Resp:
    return asyncio.run(_request(srv.url, method, path, headers, data))


def raw_call(
    srv: ServerThread, method: str, path: str, headers: dict[str, str] | None = None
) -> Resp:
    """http.client sends the path exactly as given (no dot-segment normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return Resp(r.status, CIMultiDict(r.getheaders()), r.read())
    finally:
        conn.close()


def push_blob(srv: ServerThread, repo: str, data: bytes) -> str:
    digest = sha(data)
    r = call(srv, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
    assert r.status == 201, r
    return digest


def make_manifest(
    srv: ServerThread,
    repo: str,
    layers: list[bytes],
    *,
    config: bytes = b"{}",
    config_type: str = OCI_EMPTY,
    media_type: str = OCI_MANIFEST,
    extra: dict[str, Any] | None = None,
) -> bytes:
    desc = []
    for data in layers:
        desc.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": push_blob(srv, repo, data),
                "size": len(data),
            }
        )
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": push_blob(srv, repo, config),
            "size": len(config),
        },
        "layers": desc,
    }
    obj.update(extra or {})
    return json.dumps(obj).encode()


def put_manifest(
    srv: ServerThread, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST
) -> Resp:
    return call(
        srv, "PUT", f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type}
    )


# -- ping, errors, names ---------------------------------------------------------------


def test_ping(server: ServerThread) -> None:
    r = call(server, "GET", "/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert call(server, "HEAD", "/v2/").status == 200


def test_unknown_repository_and_endpoint(server: ServerThread) -> None:
    r = call(server, "GET", "/v2/nosuch/repo/tags/list")
    assert (r.status, r.error_code()) == (404, "NAME_UNKNOWN")
    r = call(server, "GET", f"/v2/nosuch/blobs/{sha(b'x')}")
    assert (r.status, r.error_code()) == (404, "NAME_UNKNOWN")
    r = call(server, "GET", "/v2/x/whatever")
    assert r.status == 404
    assert r.json()["errors"]
    r = call(server, "POST", "/v2/x/tags/list")
    assert (r.status, r.error_code()) == (405, "UNSUPPORTED")
    assert "GET" in r.headers["Allow"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/UPPER/tags/list",
        "/v2/a//b/tags/list",
        "/v2/-a/tags/list",
        "/v2/a/blobs/x/tags/list",  # 'blobs' would land inside layout a
        "/v2/a/index.json/tags/list",
        "/v2/%2e%2e/etc/tags/list",
        "/v2/.chunkah/tags/list",
        "/v2/" + "a" * 256 + "/tags/list",
    ],
)
def test_invalid_names(server: ServerThread, path: str) -> None:
    r = raw_call(server, "GET", path)
    assert r.status in (400, 404), r
    if r.status == 400:
        assert r.json()["errors"][0]["code"] == "NAME_INVALID"


def test_paths_never_escape_root(server: ServerThread, tmp_path: Path) -> None:
    outside = server.root.parent / "outside-layout"
    OciLayout.create(outside)
    for path in (
        "/v2/../outside-layout/tags/list",
        "/v2/a/../../outside-layout/tags/list",
        "/v2/%2e%2e/outside-layout/tags/list",
        "/v2/%2E%2E%2Foutside-layout/tags/list",
    ):
        r = raw_call(server, "GET", path)
        assert r.status in (400, 404), (path, r)
    # Uploads into a name with dots are refused before touching the disk.
    r = raw_call(server, "POST", "/v2/..%2f..%2fevil/blobs/uploads/")
    assert r.status in (400, 404)
    assert not (server.root.parent / "evil").exists()


def test_invalid_digests(server: ServerThread) -> None:
    repo = "digests/x"
    push_blob(server, repo, b"data")
    for bad in (
        "sha256:ABC",
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 128,
        "md5:abc",
        "sha256:" + "a" * 63,
    ):
        r = call(server, "GET", f"/v2/{repo}/blobs/{bad}")
        assert (r.status, r.error_code()) == (400, "DIGEST_INVALID"), bad
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/?digest=sha256:nothex", data=b"x")
    assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")


# -- uploads ---------------------------------------------------------------------------


def test_monolithic_upload(server: ServerThread) -> None:
    data = os.urandom(100_000)
    digest = sha(data)
    r = call(server, "POST", f"/v2/up/mono/blobs/uploads/?digest={digest}", data=data)
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/up/mono/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    blob = server.root / "up" / "mono" / "blobs" / "sha256" / digest.split(":")[1]
    assert blob.read_bytes() == data
    assert (server.root / "up" / "mono" / "oci-layout").is_file()
    OciLayout.open(server.root / "up" / "mono")  # an ordinary layout
    # Wrong digest: rejected, nothing stored, no session left behind.
    r = call(server, "POST", f"/v2/up/mono/blobs/uploads/?digest={sha(b'other')}", data=data[:10])
    assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")
    assert not (blob.parent / sha(b"other").split(":")[1]).exists()
    assert list((server.root / "up" / "mono" / ".chunkah" / "uploads").iterdir()) == []


def test_chunked_upload(server: ServerThread) -> None:
    repo = "up/chunked"
    data = os.urandom(300_000)
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202
    assert r.headers["Range"] == "0-0"
    uid = r.headers["Docker-Upload-UUID"]
    loc = r.headers["Location"]
    assert loc == f"/v2/{repo}/blobs/uploads/{uid}"
    chunks = [data[:100_000], data[100_000:250_000], data[250_000:]]
    offset = 0
    for chunk in chunks:
        r = call(
            server,
            "PATCH",
            loc,
            data=chunk,
            headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
        )
        assert r.status == 202, r
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}"
        loc = r.headers["Location"]
    r = call(server, "GET", loc)
    assert (r.status, r.headers["Range"], r.headers["Docker-Upload-UUID"]) == (
        204,
        f"0-{offset - 1}",
        uid,
    )
    r = call(server, "PUT", f"{loc}?digest={sha(data)}")
    assert r.status == 201
    r = call(server, "GET", f"/v2/{repo}/blobs/{sha(data)}")
    assert r.body == data
    r = call(server, "GET", loc)  # the session is gone
    assert (r.status, r.error_code()) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_out_of_order_and_bad_chunks(server: ServerThread) -> None:
    repo = "up/order"
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["Location"]
    r = call(server, "PATCH", loc, data=b"abcd", headers={"Content-Range": "0-3"})
    assert r.status == 202
    # A gap, an overlap, a range that disagrees with the body.
    r = call(server, "PATCH", loc, data=b"ef", headers={"Content-Range": "10-11"})
    assert (r.status, r.error_code(), r.headers["Range"]) == (416, "BLOB_UPLOAD_INVALID", "0-3")
    r = call(server, "PATCH", loc, data=b"ef", headers={"Content-Range": "2-3"})
    assert r.status == 416
    r = call(server, "PATCH", loc, data=b"efg", headers={"Content-Range": "4-5"})
    assert (r.status, r.error_code()) == (400, "BLOB_UPLOAD_INVALID")
    r = call(server, "PATCH", loc, data=b"ef", headers={"Content-Range": "bogus"})
    assert r.status == 400
    r = call(server, "GET", loc)
    assert r.headers["Range"] == "0-3"  # nothing of the refused chunks was kept
    # A chunk without Content-Range is appended (docker-style streaming).
    r = call(server, "PATCH", loc, data=b"efgh")
    assert (r.status, r.headers["Range"]) == (202, "0-7")
    # The final PUT may carry the last bytes.
    r = call(
        server,
        "PUT",
        f"{loc}?digest={sha(b'abcdefghij')}",
        data=b"ij",
        headers={"Content-Range": "8-9"},
    )
    assert r.status == 201, r
    # Digest mismatch on PUT: 400, session dropped.
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["Location"]
    r = call(server, "PUT", f"{loc}?digest={sha(b'x')}", data=b"y")
    assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")
    assert call(server, "GET", loc).status == 404
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["Location"]
    r = call(server, "PUT", loc, data=b"y")  # no digest
    assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")


def test_upload_cancel_and_unknown(server: ServerThread) -> None:
    repo = "up/cancel"
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["Location"]
    call(server, "PATCH", loc, data=b"partial")
    assert call(server, "DELETE", loc).status == 204
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        r = call(server, method, loc)
        assert (r.status, r.error_code()) == (404, "BLOB_UPLOAD_UNKNOWN"), method
    r = call(server, "GET", f"/v2/{repo}/blobs/uploads/../../../etc")
    assert r.status in (400, 404)
    r = call(server, "GET", f"/v2/{repo}/blobs/uploads/not-a-uuid")
    assert (r.status, r.error_code()) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_session_survives_restart(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "root").start()
    try:
        r = call(srv, "POST", "/v2/restart/me/blobs/uploads/")
        loc = r.headers["Location"]
        call(srv, "PATCH", loc, data=b"hello ", headers={"Content-Range": "0-5"})
    finally:
        srv.stop()
    srv = ServerThread(tmp_path / "root").start()
    try:
        r = call(srv, "GET", loc)
        assert (r.status, r.headers["Range"]) == (204, "0-5")
        call(srv, "PATCH", loc, data=b"world", headers={"Content-Range": "6-10"})
        r = call(srv, "PUT", f"{loc}?digest={sha(b'hello world')}")
        assert r.status == 201
    finally:
        srv.stop()


def test_cross_repository_mount(server: ServerThread) -> None:
    data = os.urandom(5000)
    digest = push_blob(server, "mount/src", data)
    r = call(server, "POST", f"/v2/mount/dst/blobs/uploads/?mount={digest}&from=mount/src")
    assert (r.status, r.headers["Docker-Content-Digest"]) == (201, digest)
    assert r.headers["Location"] == f"/v2/mount/dst/blobs/{digest}"
    assert call(server, "GET", f"/v2/mount/dst/blobs/{digest}").body == data
    # Not in the source (or no such source): an ordinary upload session starts.
    missing = sha(b"missing")
    for query in (
        f"mount={missing}&from=mount/src",
        f"mount={missing}&from=no/such",
        f"mount={missing}",
    ):
        r = call(server, "POST", f"/v2/mount/dst2/blobs/uploads/?{query}")
        assert r.status == 202, query
        assert r.headers["Docker-Upload-UUID"]


def test_concurrent_uploads_and_downloads(server: ServerThread) -> None:
    blobs = [os.urandom(50_000 + i) for i in range(24)]

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(server.url, timeout=timeout) as s:

            async def up(data: bytes) -> None:
                async with s.post("/v2/conc/x/blobs/uploads/") as r:
                    loc = r.headers["Location"]
                async with s.patch(
                    loc, data=data, headers={"Content-Range": f"0-{len(data) - 1}"}
                ) as r:
                    assert r.status == 202
                async with s.put(f"{loc}?digest={sha(data)}") as r:
                    assert r.status == 201

            async def down(data: bytes) -> None:
                async with s.get(
                    f"/v2/conc/x/blobs/{sha(data)}", headers={"Range": "bytes=10-19,-5"}
                ) as r:
                    assert r.status == 206
                    await r.read()

            await asyncio.gather(*(up(b) for b in blobs))
            await asyncio.gather(*(down(b) for b in blobs), *(down(b) for b in blobs))

    asyncio.run(asyncio.wait_for(run(), 120))


def test_concurrent_tag_pushes_lose_nothing(server: ServerThread) -> None:
    repo = "conc/tags"
    body = make_manifest(server, repo, [b"shared layer"])
    bodies = {f"t{i}": make_manifest(server, repo, [b"layer %d" % i]) for i in range(20)}

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(server.url, timeout=timeout) as s:

            async def put(tag: str, data: bytes) -> None:
                headers = {"Content-Type": OCI_MANIFEST}
                async with s.put(f"/v2/{repo}/manifests/{tag}", data=data, headers=headers) as r:
                    assert r.status == 201

            await asyncio.gather(
                *(put(t, b) for t, b in bodies.items()), *(put(f"s{i}", body) for i in range(20))
            )

    asyncio.run(asyncio.wait_for(run(), 120))
    layout = OciLayout.open(server.root / repo)
    assert layout.tags() == sorted([*bodies, *(f"s{i}" for i in range(20))])
    for tag, data in bodies.items():
        assert call(server, "GET", f"/v2/{repo}/manifests/{tag}").body == data


# -- manifests -------------------------------------------------------------------------


def test_manifest_push_pull_by_tag_and_digest(server: ServerThread) -> None:
    repo = "man/basic"
    body = make_manifest(server, repo, [b"layer one", b"layer two"])
    r = put_manifest(server, repo, "v1", body)
    assert r.status == 201, r
    digest = sha(body)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{digest}"
    assert "OCI-Subject" not in r.headers
    for ref in ("v1", digest):
        r = call(server, "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status == 200
        assert r.body == body
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        h = call(server, "HEAD", f"/v2/{repo}/manifests/{ref}")
        assert (h.status, h.headers["Content-Length"], h.body) == (200, str(len(body)), b"")
        assert h.headers["Docker-Content-Digest"] == digest
    # index.json lists the tag; chunkah.oci reads the repository as a layout.
    index = json.loads((server.root / repo / "index.json").read_bytes())
    tagged = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
    ]
    assert [m["digest"] for m in tagged] == [digest]
    assert OciLayout.open(server.root / repo).tags() == ["v1"]
    # Unknown tag and digest.
    r = call(server, "GET", f"/v2/{repo}/manifests/nope")
    assert (r.status, r.error_code()) == (404, "MANIFEST_UNKNOWN")
    r = call(server, "GET", f"/v2/{repo}/manifests/{sha(b'nope')}")
    assert (r.status, r.error_code()) == (404, "MANIFEST_UNKNOWN")
    # A layer blob is not served as a manifest.
    r = call(server, "GET", f"/v2/{repo}/manifests/{sha(b'layer one')}")
    assert (r.status, r.error_code()) == (404, "MANIFEST_UNKNOWN")
    r = call(server, "GET", f"/v2/{repo}/manifests/bad!tag")
    assert (r.status, r.error_code()) == (400, "TAG_INVALID")


def test_pushed_image_resolves_with_chunkah_oci(server: ServerThread) -> None:
    repo = "man/resolvable"
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    layer = buf.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
        }
    ).encode()
    body = make_manifest(
        server, repo, [layer], config=config, config_type="application/vnd.oci.image.config.v1+json"
    )
    assert put_manifest(server, repo, "latest", body).status == 201
    img = resolve_image(parse_reference(f"oci:{server.root / repo}:latest"), platform=None)
    assert img.digest == sha(body)
    with img.open_layer(0) as f:
        assert f.read()


def test_manifest_put_validation(server: ServerThread) -> None:
    repo = "man/validate"
    body = make_manifest(server, repo, [b"l"])
    # Digest reference must match the body.
    r = put_manifest(server, repo, sha(b"something else"), body)
    assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")
    r = put_manifest(server, repo, sha(body), body)
    assert r.status == 201
    # Missing blobs.
    obj = json.loads(body)
    obj["layers"].append(
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b"absent"), "size": 6}
    )
    r = put_manifest(server, repo, "missing", json.dumps(obj).encode())
    assert (r.status, r.error_code()) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert sha(b"absent") in json.dumps(r.json())
    r = put_manifest(server, "man/never/created", "t", json.dumps(obj).encode())
    assert (r.status, r.error_code()) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert not (server.root / "man/never/created").exists()  # a refused push leaves nothing
    # Wrong or unsupported types, bad JSON, Content-Type/mediaType mismatch.
    r = put_manifest(server, repo, "t", b"not json")
    assert (r.status, r.error_code()) == (400, "MANIFEST_INVALID")
    r = put_manifest(server, repo, "t", body, media_type=DOCKER_MANIFEST)
    assert (r.status, r.error_code()) == (400, "MANIFEST_INVALID")
    r = put_manifest(
        server, repo, "t", body, media_type="application/vnd.docker.distribution.manifest.v1+json"
    )
    assert r.status == 201  # the body's mediaType decides when the header is no manifest type
    schema1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "t", "fsLayers": []}).encode()
    r = put_manifest(server, repo, "t", schema1, media_type="application/json")
    assert (r.status, r.error_code()) == (400, "MANIFEST_INVALID")
    r = put_manifest(
        server, repo, "t", json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    )
    assert (r.status, r.error_code()) == (400, "MANIFEST_INVALID")
    # Too large.
    big = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "x": "a" * (4 << 20)}).encode()
    r = put_manifest(server, repo, "big", big)
    assert (r.status, r.error_code()) == (413, "SIZE_INVALID")
    r = put_manifest(server, repo, "bad:tag", body)
    assert r.status == 400
    r = put_manifest(server, "UPPER", "t", body)
    assert (r.status, r.error_code()) == (400, "NAME_INVALID")


def test_content_negotiation_and_docker_types(server: ServerThread) -> None:
    repo = "man/docker"
    docker = make_manifest(
        server,
        repo,
        [b"d"],
        media_type=DOCKER_MANIFEST,
        config_type="application/vnd.docker.container.image.v1+json",
    )
    r = put_manifest(server, repo, "d", docker, media_type=DOCKER_MANIFEST)
    assert r.status == 201
    oci = make_manifest(server, repo, [b"o"])
    assert put_manifest(server, repo, "o", oci).status == 201
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha(oci),
                    "size": len(oci),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    assert put_manifest(server, repo, "i", index, media_type=OCI_INDEX).status == 201
    both = f"{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.9, {OCI_INDEX}"
    cases = [
        ("d", {"Accept": both}, 200, DOCKER_MANIFEST),
        ("d", {"Accept": OCI_MANIFEST}, 404, None),  # listed manifest types exclude it
        ("d", {"Accept": f"{DOCKER_MANIFEST};q=0, {OCI_MANIFEST}"}, 404, None),
        ("d", {}, 200, DOCKER_MANIFEST),  # no negotiation: the stored type
        ("d", {"Accept": "*/*"}, 200, DOCKER_MANIFEST),
        ("o", {"Accept": both}, 200, OCI_MANIFEST),
        ("i", {"Accept": OCI_INDEX}, 200, OCI_INDEX),
        ("i", {"Accept": OCI_MANIFEST}, 404, None),
    ]
    for tag, headers, status, ctype in cases:
        r = call(server, "GET", f"/v2/{repo}/manifests/{tag}", headers=headers)
        assert r.status == status, (tag, headers, r)
        if ctype:
            assert r.headers["Content-Type"] == ctype
        else:
            assert r.error_code() == "MANIFEST_UNKNOWN"
    # An index whose children are missing is refused.
    bad_index = json.loads(index)
    bad_index["manifests"][0]["digest"] = sha(b"nope")
    r = put_manifest(server, repo, "bad", json.dumps(bad_index).encode(), media_type=OCI_INDEX)
    assert (r.status, r.error_code()) == (400, "MANIFEST_BLOB_UNKNOWN")


def test_tag_move_keeps_old_manifest_and_delete(server: ServerThread) -> None:
    repo = "man/move"
    first = make_manifest(server, repo, [b"1"])
    second = make_manifest(server, repo, [b"2"])
    assert put_manifest(server, repo, "t", first).status == 201
    assert put_manifest(server, repo, "t", second).status == 201
    r = call(server, "GET", f"/v2/{repo}/manifests/t")
    assert r.body == second
    assert call(server, "GET", f"/v2/{repo}/manifests/{sha(first)}").body == first
    index = json.loads((server.root / repo / "index.json").read_bytes())
    assert sorted(m["digest"] for m in index["manifests"]) == sorted([sha(first), sha(second)])
    # DELETE by tag untags; by digest removes the manifest.
    assert call(server, "DELETE", f"/v2/{repo}/manifests/t").status == 202
    assert call(server, "GET", f"/v2/{repo}/manifests/t").status == 404
    assert call(server, "GET", f"/v2/{repo}/manifests/{sha(second)}").status == 200
    assert call(server, "DELETE", f"/v2/{repo}/manifests/{sha(second)}").status == 202
    assert call(server, "GET", f"/v2/{repo}/manifests/{sha(second)}").status == 404
    r = call(server, "DELETE", f"/v2/{repo}/manifests/{sha(second)}")
    assert (r.status, r.error_code()) == (404, "MANIFEST_UNKNOWN")
    r = call(server, "DELETE", f"/v2/{repo}/blobs/{sha(b'1')}")
    assert (r.status, r.error_code()) == (405, "UNSUPPORTED")


def test_tags_list_pagination_and_catalog(server: ServerThread) -> None:
    repo = "tags/paged"
    body = make_manifest(server, repo, [b"t"])
    tags = ["a", "b", "c", "d", "e"]
    for t in reversed(tags):
        assert put_manifest(server, repo, t, body).status == 201
    r = call(server, "GET", f"/v2/{repo}/tags/list")
    assert r.json() == {"name": repo, "tags": tags}
    r = call(server, "GET", f"/v2/{repo}/tags/list?n=2")
    assert r.json()["tags"] == ["a", "b"]
    assert r.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last=b>; rel="next"'
    r = call(server, "GET", f"/v2/{repo}/tags/list?n=2&last=b")
    assert r.json()["tags"] == ["c", "d"]
    r = call(server, "GET", f"/v2/{repo}/tags/list?n=2&last=d")
    assert r.json()["tags"] == ["e"]
    assert "Link" not in r.headers
    r = call(server, "GET", f"/v2/{repo}/tags/list?n=0")
    assert r.json()["tags"] == []
    r = call(server, "GET", f"/v2/{repo}/tags/list?n=-1")
    assert r.status == 400
    r = call(server, "GET", "/v2/_catalog")
    assert repo in r.json()["repositories"]
    r = call(server, "GET", "/v2/_catalog?n=1")
    assert len(r.json()["repositories"]) == 1
    assert 'rel="next"' in r.headers["Link"]


# -- referrers -------------------------------------------------------------------------


def test_referrers(tmp_path: Path) -> None:
    srv = ServerThread(tmp_path / "root").start()
    repo = "ref/app"
    try:
        subject = make_manifest(srv, repo, [b"app layer"])
        assert put_manifest(srv, repo, "v1", subject).status == 201
        subject_desc = {"mediaType": OCI_MANIFEST, "digest": sha(subject), "size": len(subject)}
        sbom = make_manifest(
            srv,
            repo,
            [b'{"sbom": true}'],
            extra={
                "artifactType": "application/spdx+json",
                "subject": subject_desc,
                "annotations": {"k": "v"},
            },
        )
        sig = make_manifest(
            srv,
            repo,
            [b"signature"],
            config_type="application/vnd.example.sig",
            extra={"subject": subject_desc},
        )
        for body in (sbom, sig):
            r = put_manifest(srv, repo, sha(body), body)
            assert r.status == 201
            assert r.headers["OCI-Subject"] == sha(subject)
        r = call(srv, "GET", f"/v2/{repo}/referrers/{sha(subject)}")
        assert r.status == 200
        assert r.headers["Content-Type"] == OCI_INDEX
        assert "OCI-Filters-Applied" not in r.headers
        got = {m["digest"]: m for m in r.json()["manifests"]}
        assert set(got) == {sha(sbom), sha(sig)}
        assert got[sha(sbom)] == {
            "mediaType": OCI_MANIFEST,
            "digest": sha(sbom),
            "size": len(sbom),
            "artifactType": "application/spdx+json",
            "annotations": {"k": "v"},
        }
        assert got[sha(sig)]["artifactType"] == "application/vnd.example.sig"  # config type
        r = call(
            srv, "GET", f"/v2/{repo}/referrers/{sha(subject)}?artifactType=application/spdx%2Bjson"
        )
        assert r.headers["OCI-Filters-Applied"] == "artifactType"
        assert [m["digest"] for m in r.json()["manifests"]] == [sha(sbom)]
        r = call(srv, "GET", f"/v2/{repo}/referrers/{sha(b'no subject')}")
        assert (r.status, r.json()["manifests"]) == (200, [])
        r = call(srv, "GET", f"/v2/{repo}/referrers/sha256:bad")
        assert (r.status, r.error_code()) == (400, "DIGEST_INVALID")
    finally:
        srv.stop()
    # After a restart (and with the cache file gone) the answer is the same.
    for drop_cache in (False, True):
        if drop_cache:
            (tmp_path / "root" / repo / ".chunkah" / "referrers.json").unlink()
        srv = ServerThread(tmp_path / "root").start()
        try:
            r = call(srv, "GET", f"/v2/{repo}/referrers/{sha(subject)}")
            assert {m["digest"] for m in r.json()["manifests"]} == {sha(sbom), sha(sig)}
            # Deleting a referrer removes it from the answer.
            if drop_cache:
                assert call(srv, "DELETE", f"/v2/{repo}/manifests/{sha(sig)}").status == 202
                r = call(srv, "GET", f"/v2/{repo}/referrers/{sha(subject)}")
                assert [m["digest"] for m in r.json()["manifests"]] == [sha(sbom)]
        finally:
            srv.stop()


# -- blob downloads and ranges ---------------------------------------------------------

BLOB = bytes(range(256)) * 4096  # 1 MiB, every offset's byte is offset % 256


@pytest.fixture(scope="module")
def blob(server: ServerThread) -> str:
    return push_blob(server, "ranges/blob", BLOB)


def get_blob(server: ServerThread, digest: str, method: str = "GET", **headers: str) -> Resp:
    return call(server, method, f"/v2/ranges/blob/blobs/{digest}", headers=headers)


def test_blob_full_and_head(server: ServerThread, blob: str) -> None:
    r = get_blob(server, blob)
    assert r.status == 200
    assert r.body == BLOB
    assert r.headers["Content-Length"] == str(len(BLOB))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == f'"{blob}"'
    assert r.headers["Docker-Content-Digest"] == blob
    h = get_blob(server, blob, "HEAD")
    assert (h.status, h.headers["Content-Length"], h.body) == (200, str(len(BLOB)), b"")
    h = get_blob(server, blob, "HEAD", Range="bytes=10-19")
    assert (h.status, h.headers["Content-Length"], h.headers["Content-Range"]) == (
        206,
        "10",
        f"bytes 10-19/{len(BLOB)}",
    )
    r = get_blob(server, sha(b"absent"))
    assert (r.status, r.error_code()) == (404, "BLOB_UNKNOWN")
    r = call(server, "HEAD", f"/v2/ranges/blob/blobs/{sha(b'absent')}")
    assert r.status == 404


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=-1000", len(BLOB) - 1000, len(BLOB) - 1),
        ("bytes=1000000-", 1000000, len(BLOB) - 1),
        ("bytes=5-99999999", 5, len(BLOB) - 1),
    ],
)
def test_single_ranges(server: ServerThread, blob: str, spec: str, start: int, end: int) -> None:
    r = get_blob(server, blob, Range=spec)
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert r.headers["Content-Length"] == str(end - start + 1)
    assert r.body == BLOB[start : end + 1]


async def _multipart(
    url: str, path: str, rng: str
) -> tuple[int, str, list[tuple[str, str, bytes]]]:
    async with aiohttp.ClientSession(url) as s, s.get(path, headers={"Range": rng}) as r:
        parts = []
        reader = aiohttp.MultipartReader.from_response(r)
        while True:
            part = await reader.next()
            if part is None:
                break
            assert isinstance(part, aiohttp.BodyPartReader)
            parts.append(
                (part.headers["Content-Type"], part.headers["Content-Range"], await part.read())
            )
        return r.status, r.headers["Content-Type"], parts


def parse_multipart_bytes(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A tiny independent parser: split on the delimiter lines, headers then data."""
    delim = b"--" + boundary.encode()
    assert body.startswith(delim + b"\r\n")
    assert body.endswith(b"\r\n" + delim + b"--\r\n")
    chunks = body[: -len(b"\r\n" + delim + b"--\r\n")].split(b"\r\n" + delim + b"\r\n")
    chunks[0] = chunks[0][len(delim) + 2 :]
    out = []
    for c in chunks:
        head, _, data = c.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers, data))
    return out


def test_multi_range(server: ServerThread, blob: str) -> None:
    spec = "bytes=0-9, 500-599, 4000-4000, -16"
    status, ctype, parts = asyncio.run(
        _multipart(server.url, f"/v2/ranges/blob/blobs/{blob}", spec)
    )
    assert status == 206
    assert ctype.startswith("multipart/byteranges; boundary=")
    want = [(0, 9), (500, 599), (4000, 4000), (len(BLOB) - 16, len(BLOB) - 1)]
    assert [p[1] for p in parts] == [f"bytes {a}-{b}/{len(BLOB)}" for a, b in want]
    assert all(p[0] == "application/octet-stream" for p in parts)
    assert [p[2] for p in parts] == [BLOB[a : b + 1] for a, b in want]
    # Same request, parsed by hand; Content-Length is exact.
    r = get_blob(server, blob, Range=spec)
    assert int(r.headers["Content-Length"]) == len(r.body)
    boundary = r.headers["Content-Type"].split("boundary=")[1]
    hand = parse_multipart_bytes(r.body, boundary)
    assert [h["Content-Range"] for h, _ in hand] == [p[1] for p in parts]
    assert [d for _, d in hand] == [p[2] for p in parts]


def test_multi_range_large_parts_and_many_ranges(server: ServerThread, blob: str) -> None:
    # Parts bigger than the server's I/O block, and 1024 small ranges.
    spec = f"bytes=0-{600_000}, {700_000}-"
    r = get_blob(server, blob, Range=spec)
    hand = parse_multipart_bytes(r.body, r.headers["Content-Type"].split("boundary=")[1])
    assert [d for _, d in hand] == [BLOB[:600_001], BLOB[700_000:]]
    many = [(i * 1000, i * 1000 + 99) for i in range(1024)]
    r = get_blob(server, blob, Range="bytes=" + ",".join(f"{a}-{b}" for a, b in many))
    assert r.status == 206
    hand = parse_multipart_bytes(r.body, r.headers["Content-Type"].split("boundary=")[1])
    assert len(hand) == 1024
    assert all(d == BLOB[a : b + 1] for (_, d), (a, b) in zip(hand, many, strict=True))


def test_overlapping_ranges_are_merged(server: ServerThread, blob: str) -> None:
    r = get_blob(server, blob, Range="bytes=0-99,50-149,100-199")
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 0-199/{len(BLOB)}"
    assert r.body == BLOB[:200]
    # Adjacent ranges stay separate parts, in the order asked.
    r = get_blob(server, blob, Range="bytes=10-19,0-9")
    hand = parse_multipart_bytes(r.body, r.headers["Content-Type"].split("boundary=")[1])
    assert [(h["Content-Range"], d) for h, d in hand] == [
        (f"bytes 10-19/{len(BLOB)}", BLOB[10:20]),
        (f"bytes 0-9/{len(BLOB)}", BLOB[:10]),
    ]
    # 1000 copies of the whole blob cost one copy.
    r = get_blob(server, blob, Range="bytes=" + ",".join(["0-"] * 1000))
    assert (r.status, len(r.body)) == (206, len(BLOB))


def test_unsatisfiable_and_too_many(server: ServerThread, blob: str) -> None:
    for spec in (f"bytes={len(BLOB)}-", f"bytes={len(BLOB) + 5}-{len(BLOB) + 10}", "bytes=-0"):
        r = get_blob(server, blob, Range=spec)
        assert r.status == 416, spec
        assert r.headers["Content-Range"] == f"bytes */{len(BLOB)}"
        assert int(r.headers["Content-Length"]) == len(r.body)  # unlike docker-registry 2.8
        assert r.error_code() == "RANGE_NOT_SATISFIABLE"
    r = get_blob(server, blob, Range="bytes=" + ",".join(f"{i}-{i}" for i in range(0, 2050, 2)))
    assert (r.status, r.headers["Content-Range"]) == (416, f"bytes */{len(BLOB)}")
    assert "1025 ranges" in r.json()["errors"][0]["message"]
    # Syntactically invalid: ignored, whole blob.
    for spec in ("bytes=9-1", "bytes=abc", "items=0-1"):
        r = get_blob(server, blob, Range=spec)
        assert (r.status, len(r.body)) == (200, len(BLOB)), spec
    # An empty blob has no satisfiable range.
    empty = push_blob(server, "ranges/blob", b"")
    r = get_blob(server, empty, Range="bytes=0-")
    assert (r.status, r.headers["Content-Range"]) == (416, "bytes */0")
    r = get_blob(server, empty)
    assert (r.status, r.body, r.headers["Content-Length"]) == (200, b"", "0")


def test_if_range(server: ServerThread, blob: str) -> None:
    r = get_blob(server, blob, Range="bytes=0-9", **{"If-Range": f'"{blob}"'})
    assert (r.status, r.body) == (206, BLOB[:10])
    for other in (f'"{sha(b"x")}"', f'W/"{blob}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        r = get_blob(server, blob, Range="bytes=0-9", **{"If-Range": other})
        assert (r.status, len(r.body)) == (200, len(BLOB)), other


def test_long_range_header_accepted(server: ServerThread, blob: str) -> None:
    # ~1000 ranges with 7-digit offsets: a header of about 16 KiB.
    ranges = [(i * 1024, i * 1024 + 10) for i in range(1000)]
    header = "bytes=" + ",".join(f"{a:07d}-{b:07d}" for a, b in ranges)
    assert len(header) > 8192
    r = get_blob(server, blob, Range=header)
    assert r.status == 206


# -- clients that go away ----------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle_fds(baseline: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    n = _fd_count()
    while n > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
        n = _fd_count()
    return n


def test_disconnect_mid_body_leaks_nothing(server: ServerThread) -> None:
    big = os.urandom(8 << 20)
    digest = push_blob(server, "abort/x", big)
    path = f"/v2/abort/x/blobs/{digest}"
    requests = [
        "",  # whole blob (sendfile)
        "Range: bytes=100-\r\n",  # single range (sendfile)
        "Range: bytes=0-1000,2000000-,-5\r\n",  # multipart (block copies)
    ]
    # Warm up (thread pool, caches), then count.
    assert call(server, "GET", path, headers={"Range": "bytes=0-0"}).status == 206
    baseline = _settle_fds(_fd_count())
    deadline = time.monotonic() + 60
    for i in range(30):
        assert time.monotonic() < deadline
        extra = requests[i % len(requests)]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            got = sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 20")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    assert _settle_fds(baseline) <= baseline
    # The server still answers, completely and correctly.
    r = call(server, "GET", path)
    assert r.status == 200
    assert r.body == big


def test_disconnect_mid_upload_rolls_back(server: ServerThread) -> None:
    repo = "abort/up"
    r = call(server, "POST", f"/v2/{repo}/blobs/uploads/")
    loc = r.headers["Location"]
    call(server, "PATCH", loc, data=b"0123456789", headers={"Content-Range": "0-9"})
    baseline = _settle_fds(_fd_count())
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Range: 10-1000009\r\n"
                f"Content-Length: 1000000\r\n\r\n".encode()
                + b"x" * 300_000
            )
            time.sleep(0.05)
    assert _settle_fds(baseline) <= baseline
    deadline = time.monotonic() + 10
    while call(server, "GET", loc).headers["Range"] != "0-9" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call(server, "GET", loc).headers["Range"] == "0-9"
    r = call(server, "PUT", f"{loc}?digest={sha(b'0123456789abc')}", data=b"abc")
    assert r.status == 201


def test_access_stats_count_bytes(server: ServerThread, blob: str) -> None:
    stats = server.stats
    assert stats is not None
    before_req, before_bytes = stats.requests, stats.bytes_sent
    get_blob(server, blob, Range="bytes=0-99")
    get_blob(server, blob)
    time.sleep(0.1)
    assert stats.requests - before_req == 2
    assert stats.bytes_sent - before_bytes == 100 + len(BLOB)


# -- serve(): the blocking entry point the CLI uses ------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    code = (
        "import sys; from pathlib import Path; from chunkah.registry.server import serve; "
        "serve(Path(sys.argv[1]), '127.0.0.1', 0, ready=lambda h, p: print(h, p, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "root")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "serve() did not report readiness in 30 s"
        host, port = proc.stdout.readline().decode().split()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/")
        r = conn.getresponse()
        assert (r.status, r.getheader("Docker-Distribution-API-Version")) == (200, "registry/2.0")
        conn.close()
        proc.send_signal(sig)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (tmp_path / "root").is_dir()
