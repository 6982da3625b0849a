"""Network faults during a whole update, between the host and a real docker-registry.

A fault-injecting proxy (``support.faultproxy``) sits in front of the registry and
breaks the update v1 -> v2 of the small image in every way the threat model lists:
resets and truncation mid-body, flipped bytes, a lying ``Content-Range``, 200 for a
range request, 416 with a bogus ``Content-Length``, 429/503 with ``Retry-After``, a
drip past the idle timeout, redirect loops, and a redirect to another host (the
registry's credentials must not follow).  Every update ends with exactly v2 deployed
or a clear error with v1 untouched; every chunk in the cache hashes to its name (no
unverified byte kept); requests are bounded.  The pipeline runs in-process
(``run_update``, what ``chunkah update`` calls) so a case costs no interpreter start;
one case goes through the CLI for its exit code and message.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from support.faultproxy import Fault, FaultProxy, proxy_thread
from support.hostile import chunkah, small_tree, update_cmd
from support.registry import RunningRegistry
from support.treediff import diff_trees

from chunkah.errors import ChunkahError, NetworkError, VerificationError
from chunkah.host.store import HostStore
from chunkah.host.sysroot import Sysroot
from chunkah.host.update import UpdateOptions, run_update
from chunkah.registry.retry import Timeouts

# Blob GETs of an update, in order: 1 config, 2 TOC, 3 single-range probe, 4 multipart.
PROBE, MULTI = 3, 4


class Images:
    def __init__(self, registry: RunningRegistry, tmp: Path) -> None:
        self.registry = registry
        self.src = {}
        self.ref = {}
        for v in (1, 2):
            self.src[v] = small_tree(tmp / f"src{v}", v)
            self.ref[v] = registry.ref("faults/small", f"v{v}")
            chunkah("build", str(self.src[v]), "-o", self.ref[v], "--plain-http", "-q")
        self.template = tmp / "template"
        chunkah(*update_cmd(self.ref[1], self.template))
        self.blob_size = 0

    def host(self, tmp: Path) -> Path:
        sysroot = tmp / "sys"
        subprocess.run(["cp", "-a", str(self.template), str(sysroot)], check=True)
        return sysroot

    def which(self, sysroot: Path) -> int:
        root = os.path.realpath(sysroot / "current")
        for v in (1, 2):
            if diff_trees(self.src[v], root) == []:
                return v
        raise AssertionError(f"current is neither image: {diff_trees(self.src[2], root)[:5]}")


@pytest.fixture(scope="module")
def images(docker_registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(docker_registry, tmp_path_factory.mktemp("fault-images"))


def update_via(
    proxy: FaultProxy, images: Images, sysroot: Path, **options: object
) -> tuple[ChunkahError | None, float]:
    ref = images.ref[2].replace(images.registry.host, proxy.host)
    store = HostStore(Sysroot.init(sysroot))
    t = time.monotonic()
    try:
        with store.sysroot.lock():
            run_update(ref, store, UpdateOptions(plain_http=True, **options))  # type: ignore[arg-type]
    except ChunkahError as exc:
        return exc, time.monotonic() - t
    return None, time.monotonic() - t


def assert_cache_verified(sysroot: Path) -> None:
    """Every chunk kept in the cache is exactly the bytes its name vouches for."""
    for path in (sysroot / "cache/chunks/sha256").glob("*/*"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    assert list((sysroot / "staging").iterdir()) == []


FAST = Timeouts(connect=5, idle=0.5, request=30)

RECOVERABLE = [
    ("reset-mid-body", [Fault("reset", nth=MULTI, after=60_000)], {}),
    ("truncated-body", [Fault("truncate", nth=MULTI, after=30_000)], {}),
    ("reset-in-probe", [Fault("reset", nth=PROBE, after=1000)], {}),
    ("flipped-byte", [Fault("flip", nth=MULTI, after=40_000)], {}),
    ("flipped-byte-probe", [Fault("flip", nth=PROBE, after=500)], {}),
    ("wrong-content-range", [Fault("header", nth=PROBE, headers={"Content-Range": "bytes 0-99/4096"})], {}),
    ("wrong-content-range-multi", [Fault("header", nth=MULTI, headers={"Content-Type": "multipart/byteranges; boundary=nope"})], {}),
    ("200-for-range", [Fault("ignore-range", nth=PROBE)], {}),
    ("200-for-multirange", [Fault("ignore-range", nth=MULTI)], {}),
    ("416-bogus-length", [Fault("status", nth=PROBE, status=416, headers={"Content-Length": "999999999"})], {}),
    ("429-retry-after", [Fault("status", nth=PROBE, times=2, status=429, retry_after="1")], {}),
    ("503-retry-after", [Fault("status", nth=MULTI, status=503, retry_after="0")], {}),
    ("503-manifest", [Fault("status", match="manifest", nth=1, status=503, retry_after="0")], {}),
    ("drip-past-timeout", [Fault("drip", nth=MULTI, after=20_000, delay=1.0)], {"timeouts": FAST}),
    ("redirects-to-itself", [Fault("redirect", nth=PROBE, times=3)], {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "faults", "options"), RECOVERABLE, ids=[c[0] for c in RECOVERABLE]
)
def test_fault_recovered(
    images: Images, tmp_path: Path, name: str, faults: list[Fault], options: dict[str, object]
) -> None:
    sysroot = images.host(tmp_path)
    with proxy_thread(images.registry.url, faults, blob_size=None) as proxy:
        error, seconds = update_via(proxy, images, sysroot, **options)
        assert error is None, f"{name}: {error!r}"
        assert images.which(sysroot) == 2
        assert_cache_verified(sysroot)
        blobs = proxy.blob_requests()
        assert any(r.fault for r in proxy.requests), "the fault never fired"
        # bounded: a handful of extra requests, never a loop
        assert len(proxy.requests) <= 30, [(r.kind, r.status, r.range) for r in proxy.requests]
        full = sum(1 for r in blobs if r.status == 200 and r.bytes > 1_000_000)
        assert full <= 1  # the layer went whole at most once
        if name == "429-retry-after":
            assert seconds >= 1.8  # Retry-After: 1, twice, honoured
        if name == "drip-past-timeout":
            assert seconds < 15


FAILING = [
    ("flipped-always", [Fault("flip", nth=PROBE, times=50, after=300)], VerificationError, 4,
     r"do not match|failed verification"),
    ("503-forever", [Fault("status", nth=PROBE, times=50, status=503, retry_after="0")],
     NetworkError, 3, r"failed after \d+ attempts: 503"),
    ("redirect-loop", [Fault("redirect", nth=PROBE, times=200)], NetworkError, 3, r"redirect"),
    ("reset-forever", [Fault("reset", nth=PROBE, times=50, after=100)], NetworkError, 3,
     r"failed after \d+ attempts"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "faults", "error", "code", "message"), FAILING, ids=[c[0] for c in FAILING]
)
def test_fault_fails_clearly(
    images: Images,
    tmp_path: Path,
    name: str,
    faults: list[Fault],
    error: type[Exception],
    code: int,
    message: str,
) -> None:
    import re

    sysroot = images.host(tmp_path)
    current = os.readlink(sysroot / "current")
    with proxy_thread(images.registry.url, faults) as proxy:
        got, _seconds = update_via(proxy, images, sysroot)
        assert isinstance(got, error), f"{name}: {got!r}"
        assert got.exit_code == code
        assert re.search(message, str(got)), str(got)
        assert os.readlink(sysroot / "current") == current
        assert images.which(sysroot) == 1
        assert_cache_verified(sysroot)
        assert len(proxy.requests) <= 60, len(proxy.requests)  # retries are bounded


def test_redirect_to_another_host_drops_credentials(images: Images, tmp_path: Path) -> None:
    """Blob GETs answered 307 to a CDN on another origin: the update completes and the
    registry's Bearer token is never sent there."""
    sysroot = images.host(tmp_path)
    with (
        proxy_thread(images.registry.url) as cdn,
        proxy_thread(images.registry.url, auth="bearer", redirect_blobs_to=cdn.url) as registry,
    ):
        error, _ = update_via(registry, images, sysroot)
        assert error is None, repr(error)
        assert images.which(sysroot) == 2
        assert registry.token_scopes  # the registry did demand a token
        authed = [
            r for r in registry.requests if r.kind in ("blob", "manifest") and r.status != 401
        ]
        assert authed and all((r.authorization or "").startswith("Bearer ") for r in authed)
        assert cdn.blob_requests() and all(r.authorization is None for r in cdn.blob_requests())


def test_cli_reports_a_network_failure(images: Images, tmp_path: Path) -> None:
    sysroot = images.host(tmp_path)
    with proxy_thread(
        images.registry.url, [Fault("status", nth=PROBE, times=50, status=503, retry_after="0")]
    ) as proxy:
        ref = images.ref[2].replace(images.registry.host, proxy.host)
        r = chunkah(*update_cmd(ref, sysroot), check=False)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("chunkah: error: ") and "503" in r.stderr
    assert "Traceback" not in r.stderr
    assert images.which(sysroot) == 1
