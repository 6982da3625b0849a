"""``chunkah serve`` under a fleet's load: 1000 concurrent simulated hosts, clients
that leave mid-body, and what stays bounded (errors, file descriptors, memory).

The server runs in its own process (``serve()``, as the CLI runs it) so its
descriptors and RSS can be read from ``/proc``; the hosts are coroutines of this
process, each with its own connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from chunkah.registry.client import RegistryClient
from chunkah.registry.fetcher import RangeFetcher
from chunkah.registry.reference import parse_registry_reference

HOSTS = 1000
BLOB_SIZE = 4 << 20
RANGES = [(4096 * 7, 65536), (1 << 20, 100_000), (3 << 20, 30_000)]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_layout(root: Path, blob: bytes) -> tuple[str, str]:
    """An OCI layout ``root/fleet/app`` holding one image (tag v2); (blob, manifest) digests."""
    repo = root / "fleet" / "app"
    blobs = repo / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = _sha(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d

    layer = put(blob)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": len(blob),
                }
            ],
        }
    ).encode()
    mdigest = put(manifest)
    (repo / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": mdigest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "v2"},
                    }
                ],
            }
        )
    )
    (repo / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layer, mdigest


@dataclass
class Served:
    pid: int
    port: int
    blob: bytes
    digest: str
    manifest: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def settled_fds(self, at_most: int, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        n = self.fds()
        while n > at_most and time.monotonic() < deadline:
            time.sleep(0.1)
            n = self.fds()
        return n


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * HOSTS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * HOSTS), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 3 * HOSTS:
        pytest.skip(f"RLIMIT_NOFILE too low for {HOSTS} connections")
    root = tmp_path_factory.mktemp("serve-load")
    blob = os.urandom(BLOB_SIZE)
    digest, manifest = _write_layout(root, blob)
    code = (
        "import sys; from pathlib import Path; from chunkah.registry.server import serve; "
        "serve(Path(sys.argv[1]), '127.0.0.1', 0, ready=lambda h, p: print(p, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "serve() did not start in 30 s"
        port = int(proc.stdout.readline())
        yield Served(proc.pid, port, blob, digest, manifest)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _host(session: aiohttp.ClientSession, srv: Served, n: int) -> None:
    """What an updating host asks: the manifest, one range, then several at once."""
    base = f"{srv.url}/v2/fleet/app"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    async with session.get(f"{base}/manifests/v2", headers=accept) as r:
        assert r.status == 200 and _sha(await r.read()) == srv.manifest
    off, length = RANGES[n % len(RANGES)]
    rng = {"Range": f"bytes={off}-{off + length - 1}"}
    async with session.get(f"{base}/blobs/{srv.digest}", headers=rng) as r:
        assert r.status == 206 and await r.read() == srv.blob[off : off + length]
    multi = ",".join(f"{o}-{o + n - 1}" for o, n in RANGES)
    async with session.get(f"{base}/blobs/{srv.digest}", headers={"Range": f"bytes={multi}"}) as r:
        assert r.status == 206
        assert r.headers["Content-Type"].startswith("multipart/byteranges")
        body = await r.read()
        assert all(srv.blob[o : o + n] in body for o, n in RANGES)


async def _wave(srv: Served, hosts: int) -> tuple[int, list[BaseException], int]:
    """``hosts`` at once, one connection each; (peak server fds, errors, ok)."""
    peak = srv.fds()
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, srv.fds())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    connector = aiohttp.TCPConnector(limit=hosts, limit_per_host=hosts, force_close=False)
    timeout = aiohttp.ClientTimeout(total=90)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            results = await asyncio.gather(
                *(_host(session, srv, i) for i in range(hosts)), return_exceptions=True
            )
    finally:
        stop.set()
        await sampler
    errors = [r for r in results if isinstance(r, BaseException)]
    return peak, errors, len(results) - len(errors)


def test_thousand_concurrent_hosts(served: Served) -> None:
    # serve() raised its soft descriptor limit to the hard one.
    limits = Path(f"/proc/{served.pid}/limits").read_text().splitlines()
    soft, hard = next(ln for ln in limits if ln.startswith("Max open files")).split()[3:5]
    assert soft == hard
    baseline = served.settled_fds(served.fds())
    t0 = time.monotonic()
    peak1, errors, ok = asyncio.run(_wave(served, HOSTS))
    first = time.monotonic() - t0
    assert not errors, f"{len(errors)} errors, e.g. {errors[0]!r}"
    assert ok == HOSTS
    assert first < 60, f"{HOSTS} hosts took {first:.1f} s"
    # Bounded: one descriptor per connection plus the blobs being sent, nothing more.
    assert peak1 <= baseline + 2 * HOSTS + 16, (baseline, peak1)
    assert served.settled_fds(baseline + 4) <= baseline + 4
    rss1 = served.rss()
    # A second wave of the same size: memory flat, descriptors back to where they were.
    _, errors, ok = asyncio.run(_wave(served, HOSTS))
    assert not errors and ok == HOSTS
    assert served.settled_fds(baseline + 4) <= baseline + 4
    rss2 = served.rss()
    assert rss2 <= rss1 + (16 << 20), (rss1, rss2)


async def _leave_mid_body(srv: Served, header: str) -> None:
    """Ask for a big body, read a few bytes of it, then reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        f"GET /v2/fleet/app/blobs/{srv.digest} HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode()
    )
    await writer.drain()
    head = await reader.read(2048)
    assert head.startswith(b"HTTP/1.1 20"), head[:80]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST: the server is mid-sendfile or mid-block


def test_clients_leaving_mid_body_under_load(served: Served) -> None:
    """300 hosts walk away mid-body (whole blob, large and small ranges and multipart
    bodies: every way a body is sent) while 300 others fetch through RangeFetcher: the
    others get correct bytes, nothing leaks, the server keeps answering."""
    baseline = served.settled_fds(served.fds())
    headers = [
        "",  # whole blob: sendfile
        "Range: bytes=1000-\r\n",  # a large range: sendfile
        "Range: bytes=0-1000,2000000-,-5\r\n",  # a large multipart body: worker thread
        "Range: bytes=5000-205000\r\n",  # a small range: one pread and write on the loop
        "Range: bytes=0-60000,100000-160000\r\n",  # a small multipart body, on the loop
    ]
    ref = parse_registry_reference(f"docker://127.0.0.1:{served.port}/fleet/app:v2")

    async def fetching() -> None:
        async with (
            RegistryClient(plain_http=True, auth_files=False) as client,
            RangeFetcher(client, ref, served.digest, BLOB_SIZE) as f,
        ):
            got = await f.fetch_all(RANGES)
        assert got == [served.blob[o : o + n] for o, n in RANGES]

    async def go() -> list[BaseException]:
        tasks = [_leave_mid_body(served, headers[i % len(headers)]) for i in range(300)]
        tasks += [fetching() for _ in range(300)]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 90)
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(go())
    assert not errors, f"{len(errors)} errors, e.g. {errors[0]!r}"
    assert served.settled_fds(baseline + 4) <= baseline + 4
    _, errors, ok = asyncio.run(_wave(served, 50))
    assert not errors and ok == 50


# -- the caches that keep manifests cheap follow every change --------------------------------


def test_index_and_manifest_caches_follow_changes(tmp_path: Path) -> None:
    from chunkah.oci import Descriptor
    from chunkah.registry.server_store import RepoStore

    store = RepoStore(tmp_path, "cache/repo")
    store.create()
    media = "application/vnd.oci.image.manifest.v1+json"
    bodies = [json.dumps({"schemaVersion": 2, "mediaType": media, "n": i}).encode() for i in (1, 2)]
    descs = []
    for body in bodies:
        digest = store.write_blob_bytes(body)
        descs.append(Descriptor(media_type=media, digest=digest, size=len(body)))
    # A tag moving back and forth faster than file timestamps tick (same index size).
    for i in range(40):
        store.put_manifest(descs[i % 2], "t")
        found = store.find_manifest("t")
        assert found is not None and found.digest == descs[i % 2].digest
        assert store.index_cached()
    # Another writer (a second server process on the same root) is seen too.
    other = RepoStore(tmp_path, "cache/repo")
    other.put_manifest(descs[0], "u")
    assert not store.index_cached()
    found = store.find_manifest("u")
    assert found is not None and found.digest == descs[0].digest
    # Referrers: from memory while index.json is unchanged, recomputed when it changes.
    subject = descs[0].digest
    assert store.referrers(subject) == []
    assert store.referrers_cached()
    referrer = json.dumps(
        {"schemaVersion": 2, "mediaType": media, "subject": {"digest": subject}}
    ).encode()
    rdigest = store.write_blob_bytes(referrer)
    store.put_manifest(Descriptor(media_type=media, digest=rdigest, size=len(referrer)), None)
    assert not store.referrers_cached()
    assert [d["digest"] for d in store.referrers(subject)] == [rdigest]
    assert store.referrers_cached()
    # Manifest bytes: kept after the first read, forgotten when the file goes.
    digest = descs[1].digest
    assert store.read_small_blob(digest) == bodies[1]
    assert store.small_blob_cached(digest)
    assert store.read_small_blob(digest) == bodies[1]
    store.blob_path(digest).unlink()
    assert store.read_small_blob(digest) is None
    assert not store.small_blob_cached(digest)
