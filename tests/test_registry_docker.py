"""The client against Debian's docker-registry 2.8: push, pull, manifests, uploads,
ranges and multi-range, its 416 quirk, and its redirect middleware (307 to a
static server: one that does multipart, one that answers 200 to multi-range, one
that refuses, and ``python -m http.server``, which ignores Range altogether)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.registry import RunningRegistry, free_port, start_registry
from support.tools import skopeo_inspect
from test_registry_common import (
    SampleImage,
    client,
    expected,
    make_image,
    repo_name,
    run,
    scattered_ranges,
)

from chunkah import oci
from chunkah.errors import InputError, VerificationError
from chunkah.registry.errors import RegistryNotFoundError
from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import parse_registry_reference
from chunkah.registry.transfer import pull_image, push_image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> SampleImage:
    return make_image(tmp_path_factory.mktemp("img") / "layout", size=3 << 20)


def push(reg: RunningRegistry, img: SampleImage, repo: str | None = None) -> str:
    dest = f"docker://{reg.host}/{repo or repo_name()}:v1"

    async def go() -> str:
        async with client() as c:
            await push_image(c, img.ref, dest)
        return dest

    return run(go())


def test_push_pull_roundtrip_and_skopeo_agrees(
    docker_registry: RunningRegistry, image: SampleImage, tmp_path: Path
) -> None:
    dest = f"docker://{docker_registry.host}/{repo_name()}:v1"

    async def go() -> tuple[str, str]:
        async with client() as c:
            pushed = await push_image(c, image.ref, dest)
            pulled = await pull_image(c, dest, f"oci:{tmp_path / 'out'}:copy")
            return pushed, pulled.digest

    pushed, pulled = run(go())
    assert pushed == pulled == image.manifest.digest
    raw = skopeo_inspect(dest, raw=True, parse=False)
    assert isinstance(raw, bytes) and oci.sha256_digest(raw) == pushed
    info = skopeo_inspect(dest)
    assert isinstance(info, dict) and info["Digest"] == pushed
    assert info["Layers"] == [image.layer.digest]
    back = oci.resolve_image(f"oci:{tmp_path / 'out'}:copy")
    assert back.digest == pushed
    assert back.source.open_blob(back.layers[0]).read() == image.blob
    # Pushing again uploads nothing: every blob is found by HEAD.
    mark = docker_registry.access_offset()

    async def again() -> None:
        async with client() as c:
            await push_image(c, image.ref, dest)

    run(again())
    methods = {e.method for e in docker_registry.access_entries(since=mark)}
    assert methods <= {"HEAD", "PUT", "GET"}
    assert not any(
        e.method == "PATCH" or "uploads" in e.path
        for e in docker_registry.access_entries(since=mark)
    )


def test_chunked_single_post_and_mount(docker_registry: RunningRegistry, tmp_path: Path) -> None:
    a = parse_registry_reference(f"docker://{docker_registry.host}/{repo_name()}")
    b = parse_registry_reference(f"docker://{docker_registry.host}/{repo_name()}")
    data = os.urandom((2 << 20) + 12345)
    small = b"small blob"
    path = tmp_path / "blob"
    path.write_bytes(data)

    async def go() -> None:
        async with client() as c:
            desc = await c.upload_blob(a, path, chunk_size=1 << 20)
            assert desc.digest == oci.sha256_digest(data) and desc.size == len(data)
            assert await c.blob_size(a, desc.digest) == len(data)
            await c.upload_blob(a, small, single_post=True)
            assert await c.blob_exists(a, oci.sha256_digest(small))
            assert not await c.blob_exists(b, desc.digest)
            assert await c.mount_blob(b, desc.digest, a.repository)
            assert await c.blob_exists(b, desc.digest)
            sink = io.BytesIO()
            await c.download_blob(b, desc.digest, sink, size=len(data))
            assert sink.getvalue() == data

    mark = docker_registry.access_offset()
    run(go())
    patches = [e for e in docker_registry.access_entries(since=mark) if e.method == "PATCH"]
    assert len(patches) == 3


def test_index_platform_selection_and_digest_refs(
    docker_registry: RunningRegistry, tmp_path: Path
) -> None:
    amd = make_image(tmp_path / "amd", size=1000, seed=1, arch="amd64")
    arm = make_image(tmp_path / "arm", size=1000, seed=2, arch="arm64")
    repo = parse_registry_reference(f"docker://{docker_registry.host}/{repo_name()}:multi")

    async def go() -> None:
        async with client() as c:
            entries = []
            for img, plat in (
                (amd, oci.Platform("amd64")),
                (arm, oci.Platform("arm64", variant="v8")),
            ):
                await push_image(c, img.ref, repo.with_tag(f"single-{plat.architecture}"))
                entries.append(
                    oci.Descriptor(
                        img.manifest.media_type,
                        img.manifest.digest,
                        img.manifest.size,
                        platform=plat,
                    )
                )
            index = oci.Index(tuple(entries)).to_json()
            index_digest = await c.put_manifest(repo, index, oci.OCI_INDEX)
            got = await c.resolve(repo, oci.Platform("arm64"))
            assert got.digest == arm.manifest.digest and got.index is not None
            assert got.index.digest == index_digest
            assert got.config is not None and got.config.architecture == "arm64"
            got = await c.resolve(repo.with_digest(index_digest), oci.Platform("amd64"))
            assert got.digest == amd.manifest.digest
            with pytest.raises(oci.PlatformNotFoundError, match="arm64"):
                await c.resolve(repo, oci.Platform("s390x"))
            fetched = await c.get_manifest(repo.with_digest(arm.manifest.digest))
            assert fetched.media_type == oci.OCI_MANIFEST and fetched.digest == arm.manifest.digest
            assert set(await c.list_tags(repo)) == {"multi", "single-amd64", "single-arm64"}
            with pytest.raises(RegistryNotFoundError):
                await c.get_manifest(repo.with_tag("nope"))
            with pytest.raises(InputError):
                await c.get_manifest(
                    parse_registry_reference(f"docker://{docker_registry.host}/no/such:x")
                )

    run(go())


def fetch(
    reg_host: str,
    repo: str,
    img: SampleImage,
    ranges: list[tuple[int, int]],
    *,
    options: RangeOptions | None = None,
    size: int | None = -1,
    **client_kw: object,
) -> tuple[list[bytes], dict[str, object], str]:
    ref = parse_registry_reference(f"docker://{reg_host}/{repo}")

    async def go() -> tuple[list[bytes], dict[str, object], str]:
        async with (
            client(**client_kw) as c,
            RangeFetcher(
                c, ref, img.layer.digest, img.layer.size if size == -1 else size, options=options
            ) as f,
        ):
            out = await f.fetch_all(ranges)
            return out, c.stats.to_dict(), f.mode

    return run(go())


def test_ranges_and_multirange(docker_registry: RunningRegistry, image: SampleImage) -> None:
    dest = push(docker_registry, image)
    repo = dest.split("/", 3)[3].rsplit(":", 1)[0]
    ranges = scattered_ranges(len(image.blob), 3000, 300, seed=5)
    mark = docker_registry.access_offset()
    out, stats, mode = fetch(docker_registry.host, repo, image, ranges)
    assert out == expected(image.blob, ranges)
    assert mode == "multi"
    entries = [e for e in docker_registry.access_entries(since=mark) if e.is_blob]
    assert all(e.status == 206 for e in entries)
    assert stats["fallbacks"] == 0 and stats["whole_downloads"] == 0
    assert stats["range_requests"] == len(entries)
    # Far fewer requests than ranges, and fewer bytes than the blob.
    assert len(entries) < 40
    assert sum(e.bytes for e in entries) == stats["blob_bytes"] < len(image.blob)


def test_416_with_wrong_content_length(
    docker_registry: RunningRegistry, image: SampleImage
) -> None:
    """docker-registry's 416 claims the whole blob as Content-Length and sends 33 bytes:
    the client must neither wait for the rest nor download the blob."""
    dest = push(docker_registry, image)
    repo = dest.split("/", 3)[3].rsplit(":", 1)[0]
    beyond = [(len(image.blob) + 10, 10)]
    t = time.monotonic()
    with pytest.raises(VerificationError, match="beyond"):
        fetch(docker_registry.host, repo, image, beyond, size=None)
    assert time.monotonic() - t < 4
    with pytest.raises(InputError, match="beyond"):
        fetch(docker_registry.host, repo, image, beyond)  # size known: refused before asking


def test_redirect_to_multipart_blob_server(
    docker_registry_redirect: RunningRegistry, image: SampleImage
) -> None:
    reg = docker_registry_redirect
    assert reg.blob_server is not None
    dest = push(reg, image)
    repo = dest.split("/", 3)[3].rsplit(":", 1)[0]
    ranges = scattered_ranges(len(image.blob), 500, 2000, seed=6)
    reg.blob_server.take_requests()
    out, stats, mode = fetch(reg.host, repo, image, ranges)
    assert out == expected(image.blob, ranges)
    assert mode == "multi"
    served = reg.blob_server.take_requests()
    assert served and all(r.status == 206 and r.range for r in served)
    assert stats["redirects"] == len(served) == stats["range_requests"]


@pytest.mark.parametrize("behaviour", ["full", "416", "501", "400"])
def test_redirect_target_refusing_multirange(
    tmp_path: Path, image: SampleImage, behaviour: str
) -> None:
    reg = start_registry(tmp_path / "reg", redirect=True, multirange=behaviour)
    try:
        assert reg.blob_server is not None
        dest = push(reg, image)
        repo = dest.split("/", 3)[3].rsplit(":", 1)[0]
        ranges = scattered_ranges(len(image.blob), 200, 500, seed=7)
        reg.blob_server.take_requests()
        out, stats, mode = fetch(reg.host, repo, image, ranges, options=RangeOptions(max_ranges=64))
        assert out == expected(image.blob, ranges)
        served = reg.blob_server.take_requests()
        full = [r for r in served if r.status == 200]
        if behaviour == "full":
            # single-range probe fine, the multi-range probe answered with the whole
            # blob: that answer is the one whole download.
            assert mode == "whole" and stats["fallbacks"] == 1
            assert len(full) == 1 and full[0].bytes == len(image.blob)
            assert sum(r.bytes for r in served) < 2 * len(image.blob)
        else:
            # Refusals halve the ranges per request down to one; nothing whole.
            assert mode == "single" and not full
            assert stats["halvings"] >= 6  # 64 -> 32 -> ... -> 1
            assert sum(r.bytes for r in served) < len(image.blob)
    finally:
        reg.stop()


def test_python_http_server_as_redirect_target(tmp_path: Path, image: SampleImage) -> None:
    """``python -m http.server`` ignores Range (200 + body): one whole download, the
    first answer's body used, the blob fetched exactly once."""
    storage = tmp_path / "reg" / "storage"
    storage.mkdir(parents=True)
    port = free_port()
    log = tmp_path / "http-server.log"
    with open(log, "wb") as err:
        srv = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(storage),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    reg = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        reg = start_registry(tmp_path / "reg", redirect_baseurl=f"http://127.0.0.1:{port}/")
        dest = push(reg, image)
        repo = dest.split("/", 3)[3].rsplit(":", 1)[0]
        ranges = scattered_ranges(len(image.blob), 300, 1000, seed=8)
        before = log.read_text().count(image.layer.digest.split(":")[1])
        out, stats, mode = fetch(reg.host, repo, image, ranges)
        assert out == expected(image.blob, ranges)
        assert mode == "whole" and stats["fallbacks"] == 1 and stats["whole_downloads"] == 1
        assert stats["blob_requests"] == 1  # the probe's 200 body is the download
        assert stats["blob_bytes"] == len(image.blob)
        time.sleep(0.1)
        blob_lines = log.read_text().count(image.layer.digest.split(":")[1]) - before
        assert blob_lines == 1
    finally:
        if reg is not None:
            reg.stop()
        os.kill(srv.pid, signal.SIGTERM)
        srv.wait(timeout=10)


def test_tls_verify_false_falls_back_to_http(
    docker_registry: RunningRegistry, image: SampleImage
) -> None:
    dest = push(docker_registry, image)

    async def go() -> str:
        async with client(plain_http=False, tls_verify=False) as c:
            return (await c.get_manifest(dest)).digest

    assert run(go()) == image.manifest.digest

    async def strict() -> None:
        async with client(plain_http=False) as c:
            await c.get_manifest(dest)

    with pytest.raises(Exception, match="failed after"):
        run(strict())
