"""Faults injected between the client and a real docker-registry.

Every case ends with the right bytes or a clear error, within bounded retries, and
the proxy's byte count shows that no blob went over the wire twice in full.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import Fault, FaultProxy
from support.registry import RunningRegistry
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
from chunkah.errors import InputError, NetworkError, VerificationError
from chunkah.registry.auth import Credentials
from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import RegistryReference, parse_registry_reference
from chunkah.registry.retry import RetryPolicy, Timeouts
from chunkah.registry.transfer import push_image

SIZE = 2 << 20


@pytest.fixture(scope="module")
def pushed(
    docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SampleImage, str]:
    img = make_image(tmp_path_factory.mktemp("img") / "layout", size=SIZE, seed=9)
    repo = repo_name("faults")

    async def go() -> None:
        async with client() as c:
            await push_image(c, img.ref, f"docker://{docker_registry.host}/{repo}:v1")

    run(go())
    return img, repo


def proxied(proxy: FaultProxy, repo: str) -> RegistryReference:
    return parse_registry_reference(f"docker://{proxy.host}/{repo}:v1")


async def whole(
    proxy: FaultProxy, repo: str, img: SampleImage, **kw: Any
) -> tuple[bytes, dict[str, Any]]:
    async with client(**kw) as c:
        sink = io.BytesIO()
        await c.download_blob(proxied(proxy, repo), img.layer.digest, sink, size=img.layer.size)
        return sink.getvalue(), c.stats.to_dict()


async def ranged(
    proxy: FaultProxy,
    repo: str,
    img: SampleImage,
    ranges: list[tuple[int, int]],
    *,
    options: RangeOptions | None = None,
    check: Any = None,
    **kw: Any,
) -> tuple[list[bytes], dict[str, Any], str]:
    async with (
        client(**kw) as c,
        RangeFetcher(
            c, proxied(proxy, repo), img.layer.digest, img.layer.size, options=options, check=check
        ) as f,
    ):
        out = await f.fetch_all(ranges)
        return out, c.stats.to_dict(), f.mode


# -- whole downloads --


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_whole_download_resumes(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], kind: str
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [Fault(kind, nth=1, after=SIZE // 3)]) as p:
            data, stats = await whole(p, repo, img)
            assert data == img.blob
            blobs = p.blob_requests()
            assert len(blobs) == 2 and blobs[1].range == f"bytes={blobs[0].bytes}-"
            assert p.blob_bytes() == len(img.blob)  # resumed, not restarted
            assert stats["retries"] == 1

    run(go())


def test_whole_download_resume_ignored_by_server(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    """The resume request's Range is ignored (200): its first bytes are skipped."""
    img, repo = pushed

    async def go() -> None:
        faults = [Fault("reset", nth=1, after=SIZE // 4), Fault("ignore-range", nth=2)]
        async with FaultProxy(docker_registry.url, faults) as p:
            data, _ = await whole(p, repo, img)
            assert data == img.blob
            assert p.blob_bytes() < 2 * len(img.blob)

    run(go())


def test_whole_download_flipped_byte_is_an_error(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [Fault("flip", nth=1, after=12345)]) as p:
            with pytest.raises(VerificationError, match="hash"):
                await whole(p, repo, img)
            assert len(p.blob_requests()) == 1  # not downloaded again

    run(go())


def test_whole_download_gives_up_with_a_clear_error(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(
            docker_registry.url, [Fault("status", nth=1, times=10, status=503)]
        ) as p:
            with pytest.raises(NetworkError, match=r"GET http://.* failed after 4 attempts: 503"):
                await whole(p, repo, img)
            assert len(p.blob_requests()) == 4

    run(go())


def test_idle_timeout_on_a_drip(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(
            docker_registry.url, [Fault("drip", nth=1, after=100_000, delay=1.0)]
        ) as p:
            t = time.monotonic()
            data, _ = await whole(p, repo, img, timeouts=Timeouts(connect=5, idle=0.4, request=30))
            assert data == img.blob
            assert time.monotonic() - t < 10
            # (the dripping request is logged only when the proxy notices the close)
            assert any(r.range == "bytes=100000-" for r in p.blob_requests())

    run(go())


# -- ranges --

RANGES = scattered_ranges(SIZE, 600, 400, seed=11)
OPTS = RangeOptions(max_ranges=100, concurrency=3)


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        (Fault("reset", nth=2, after=5000), "reset inside the multi-range probe"),
        (Fault("truncate", nth=3, after=3000), "truncated multipart body"),
        (Fault("reset", nth=1, after=10), "reset inside the single-range probe"),
        (Fault("status", nth=2, times=2, status=503, retry_after="0"), "503 twice"),
        (Fault("status", nth=3, status=429, retry_after="1"), "429 with Retry-After"),
        (Fault("drip", nth=3, after=2000, delay=1.0), "drip past the idle timeout"),
    ],
    ids=lambda x: x if isinstance(x, str) else x.kind,
)
def test_range_faults_recover(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], fault: Fault, what: str
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [fault]) as p:
            t = time.monotonic()
            out, stats, mode = await ranged(
                p,
                repo,
                img,
                RANGES,
                options=OPTS,
                timeouts=Timeouts(connect=5, idle=0.5, request=30),
            )
            assert out == expected(img.blob, RANGES), what
            assert mode == "multi" and stats["fallbacks"] == 0
            assert stats["retries"] >= 1
            assert p.blob_bytes() < len(img.blob)  # only ranges, never the whole blob
            if fault.kind in ("reset", "truncate"):
                # The retry asked only for what had not arrived.
                broken = next(r for r in p.blob_requests() if r.fault)
                retry = p.blob_requests()[broken.n]
                assert retry.range is not None and broken.range is not None
                assert len(retry.range.split(",")) <= len(broken.range.split(","))
                assert retry.range != broken.range
            if fault.retry_after == "1":
                assert time.monotonic() - t >= 0.9

    run(go())


@pytest.mark.parametrize("nth", [1, 2])
def test_range_answered_with_200_downloads_once(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], nth: int
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [Fault("ignore-range", nth=nth)]) as p:
            out, stats, mode = await ranged(p, repo, img, RANGES, options=OPTS)
            assert out == expected(img.blob, RANGES)
            assert mode == "whole" and stats["fallbacks"] == 1 and stats["whole_downloads"] == 1
            full = [r for r in p.blob_requests() if r.status == 200]
            assert len(full) == 1 and full[0].bytes == len(img.blob)
            assert p.blob_bytes() < 2 * len(img.blob)
            assert len(p.blob_requests()) == nth  # the 200 body was the download

    run(go())


@pytest.mark.parametrize("status", [416, 501, 400])
def test_probe_refused_falls_back_to_one_whole_download(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], status: int
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(
            docker_registry.url, [Fault("status", nth=1, status=status)], blob_size=SIZE
        ) as p:
            p.blob_size = img.layer.size
            out, stats, mode = await ranged(p, repo, img, RANGES, options=OPTS)
            assert out == expected(img.blob, RANGES)
            assert mode == "whole" and stats["whole_downloads"] == 1
            assert [r.status for r in p.blob_requests()] == [status, 200]
            assert p.blob_bytes() == len(img.blob)

    run(go())


@pytest.mark.parametrize("status", [416, 501, 400])
def test_multirange_refused_halves(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], status: int
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(
            docker_registry.url, [Fault("status", nth=2, times=2, status=status)]
        ) as p:
            p.blob_size = img.layer.size
            out, stats, mode = await ranged(p, repo, img, RANGES, options=OPTS)
            assert out == expected(img.blob, RANGES)
            assert mode == "multi" and stats["halvings"] == 2 and stats["fallbacks"] == 0
            sizes = [len(r.range.split(",")) for r in p.blob_requests() if r.range]
            assert sizes[1] == 100 and sizes[2] == 50 and max(sizes[3:]) <= 25
            assert p.blob_bytes() < len(img.blob)

    run(go())


def test_flipped_range_bytes_caught_by_check_and_refetched(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    img, repo = pushed
    digests = [hashlib.sha256(b).digest() for b in expected(img.blob, RANGES)]

    def check(i: int, data: bytes) -> bool:
        return hashlib.sha256(data).digest() == digests[i]

    # No gap merging: every byte of the first span (the single-range probe, no
    # multipart framing) belongs to a requested range, so the flip is in checked data.
    opts = RangeOptions(max_ranges=100, concurrency=3, merge_gap=0)

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [Fault("flip", nth=1, after=0)]) as p:
            out, stats, _ = await ranged(p, repo, img, RANGES, options=opts, check=check)
            assert out == expected(img.blob, RANGES)
            assert stats["retries"] == 1
            assert p.blob_bytes() < len(img.blob)
        async with FaultProxy(docker_registry.url, [Fault("flip", nth=None, after=0)]) as p:
            with pytest.raises(VerificationError, match="failed verification 2 times"):
                await ranged(p, repo, img, RANGES[:5], options=opts, check=check)

    run(go())


def test_malformed_multipart_falls_back_to_single_ranges(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    """A flipped byte inside the multipart framing (not the data): strict parsing
    rejects it, and the client continues with one range per request."""
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, [Fault("flip", nth=2, after=5)]) as p:
            few = RANGES[:20]
            out, stats, _ = await ranged(p, repo, img, few, options=OPTS)
            assert out == expected(img.blob, few)
            assert stats["halvings"] >= 1
            assert p.blob_bytes() < len(img.blob)

    run(go())


# -- manifests --


def test_manifest_faults(docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]) -> None:
    img, repo = pushed

    async def go() -> None:
        async with (
            FaultProxy(
                docker_registry.url,
                [Fault("status", match="manifest", nth=1, status=503, retry_after="0")],
            ) as p,
            client() as c,
        ):
            got = await c.get_manifest(proxied(p, repo))
            assert got.digest == img.manifest.digest
        big = b"{" + b" " * (4 << 20) + b"}"
        async with (
            FaultProxy(docker_registry.url, [Fault("body", match="manifest", body=big)]) as p,
            client() as c,
        ):
            with pytest.raises(InputError, match="limit"):
                await c.get_manifest(proxied(p, repo))
        lie = Fault(
            "body",
            match="manifest",
            nth=None,
            body=b'{"schemaVersion":2}',
            headers={
                "Docker-Content-Digest": img.manifest.digest,
                "Content-Type": oci.OCI_MANIFEST,
            },
        )
        async with FaultProxy(docker_registry.url, [lie]) as p, client() as c:
            with pytest.raises(VerificationError, match="registry says"):
                await c.get_manifest(proxied(p, repo))
            with pytest.raises(VerificationError, match="hashes to"):
                await c.get_manifest(proxied(p, repo).with_digest(img.manifest.digest))

    run(go())


# -- auth --


def test_bearer_token_flow_and_no_authorization_after_redirect(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str], tmp_path: Path
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with (
            FaultProxy(docker_registry.url) as cdn,
            FaultProxy(docker_registry.url, auth="bearer", redirect_blobs_to=cdn.url) as p,
        ):
            async with client() as c:
                ref = proxied(p, repo)
                got = await c.resolve(ref)
                assert got.digest == img.manifest.digest
                assert c.stats.auth_tokens == 1  # one token, cached for the scope
                p.expire_tokens()  # the next request's token is refused: refresh once
                async with RangeFetcher(c, ref, img.layer.digest, img.layer.size) as f:
                    out = await f.fetch_all(RANGES[:50])
                assert out == expected(img.blob, RANGES[:50])
                assert c.stats.auth_tokens == 2
                sink = io.BytesIO()
                await c.download_blob(ref, img.layer.digest, sink, size=img.layer.size)
                assert sink.getvalue() == img.blob
            assert p.token_scopes and all(s == [f"repository:{repo}:pull"] for s in p.token_scopes)
            registry_side = [
                r for r in p.requests if r.kind in ("manifest", "blob") and r.status != 401
            ]
            assert registry_side and all(
                (r.authorization or "").startswith("Bearer ") for r in registry_side
            )
            assert cdn.blob_requests() and all(r.authorization is None for r in cdn.blob_requests())

    run(go())


def test_basic_credentials_sent_to_token_server(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    img, repo = pushed

    async def go() -> None:
        async with FaultProxy(docker_registry.url, auth="bearer") as p:
            creds = {p.host: Credentials("alice", "s3cret")}
            async with client(credentials=creds) as c:
                assert (await c.get_manifest(proxied(p, repo))).digest == img.manifest.digest
            token_reqs = [r for r in p.requests if r.kind == "token"]
            assert token_reqs and token_reqs[0].authorization == "Basic YWxpY2U6czNjcmV0"

    run(go())


def test_auth_refused_is_a_clear_error(
    docker_registry: RunningRegistry, pushed: tuple[SampleImage, str]
) -> None:
    _img, repo = pushed

    async def go() -> None:
        # The proxy's tokens are never accepted: one challenge answered, then 401.
        async with FaultProxy(docker_registry.url, auth="bearer") as p:
            p.tokens = set()
            orig = p._token

            def forget(request: Any, n: int) -> Any:
                resp = orig(request, n)
                p.tokens.clear()
                return resp

            p._token = forget  # type: ignore[method-assign]
            async with client(retry=RetryPolicy(attempts=2, base_delay=0.01)) as c:
                with pytest.raises(NetworkError, match="access denied"):
                    await c.get_manifest(proxied(p, repo))

    run(go())
