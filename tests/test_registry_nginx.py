"""nginx (stock 8 KiB header buffers) in front of docker-registry: a Range header
line above 8 KiB gets 400.  The client's default cap never sends one; a client
configured too generously halves until nginx accepts, and still gets exact bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.nginx import RunningNginx, start_nginx
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

from chunkah.registry.fetcher import RangeFetcher, RangeOptions
from chunkah.registry.reference import parse_registry_reference
from chunkah.registry.transfer import pull_image, push_image


@pytest.fixture(scope="module")
def nginx(
    docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNginx]:
    proxy = start_nginx(tmp_path_factory.mktemp("nginx"), docker_registry.host)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def pushed(
    nginx: RunningNginx, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SampleImage, str]:
    img = make_image(tmp_path_factory.mktemp("img") / "layout", size=8 << 20, seed=3)
    dest = f"docker://{nginx.host}/{repo_name()}:v1"

    async def go() -> None:
        async with client() as c:
            await push_image(c, img.ref, dest)  # uploads through nginx too

    run(go())
    return img, dest


def _fetch(
    dest: str, img: SampleImage, ranges: list[tuple[int, int]], options: RangeOptions
) -> tuple[list[bytes], dict[str, object]]:
    ref = parse_registry_reference(dest)

    async def go() -> tuple[list[bytes], dict[str, object]]:
        async with (
            client() as c,
            RangeFetcher(c, ref, img.layer.digest, img.layer.size, options=options) as f,
        ):
            return await f.fetch_all(ranges), c.stats.to_dict()

    return run(go())


def test_default_cap_never_trips_nginx(
    nginx: RunningNginx, pushed: tuple[SampleImage, str]
) -> None:
    img, dest = pushed
    ranges = scattered_ranges(len(img.blob), 4000, 64, seed=1)
    start = len(nginx.entries())
    out, stats = _fetch(dest, img, ranges, RangeOptions(max_ranges=5000, merge_gap=0))
    assert out == expected(img.blob, ranges)
    entries = nginx.entries()[start:]
    blob = [e for e in entries if "/blobs/" in e.uri]
    assert blob and all(e.status == 206 for e in blob)
    assert max(e.range_length for e in blob) <= 8192 - len("Range: \r\n")
    assert stats["halvings"] == 0 and stats["fallbacks"] == 0


def test_oversize_header_halves_until_accepted(
    nginx: RunningNginx, pushed: tuple[SampleImage, str]
) -> None:
    img, dest = pushed
    ranges = scattered_ranges(len(img.blob), 4000, 64, seed=2)
    start = len(nginx.entries())
    out, stats = _fetch(
        dest, img, ranges, RangeOptions(max_ranges=5000, max_header_bytes=256 << 10, merge_gap=0)
    )
    assert out == expected(img.blob, ranges)
    blob = [e for e in nginx.entries()[start:] if "/blobs/" in e.uri]
    assert any(e.status == 400 for e in blob)
    assert all(e.status in (206, 400) for e in blob)  # never a whole download
    assert isinstance(stats["halvings"], int) and stats["halvings"] >= 1
    assert stats["fallbacks"] == 0
    assert sum(e.bytes for e in blob) < len(img.blob)


def test_pull_through_nginx(
    nginx: RunningNginx, pushed: tuple[SampleImage, str], tmp_path: Path
) -> None:
    img, dest = pushed

    async def go() -> str:
        async with client() as c:
            return (await pull_image(c, dest, f"oci:{tmp_path / 'out'}:v1")).digest

    assert run(go()) == img.manifest.digest
