#!/usr/bin/env python3
"""Registry transfer speed: our client beside skopeo and curl, ranges beside a naive client.

    python benchmarks/bench_registry.py [--runs 5] [--range-runs 3] [--size-mib 256]
                                        [--servers docker-registry,chunkah] [--skip whole,ranges]

Starts Debian's ``docker-registry`` (tests/support/registry.py) and ``chunkah serve`` on
127.0.0.1, pushes one image whose only layer is an uncompressed tar of about 256 MiB
(random bytes plus real binaries from /usr/bin and /usr/lib), then measures, side by
side and alternating (after one warm-up run each), the medians of:

- **whole blob**: ``RegistryClient.download_blob`` (sha256-verified) into a discarding
  sink and into a file; ``pull_image`` into ``oci:DIR``; ``skopeo copy docker://...
  oci:DIR`` (the same image); ``curl -o /dev/null`` (the ceiling), ``curl -o FILE``
  and ``curl | openssl dgst -sha256`` (the ceiling with verification);
- **ranges**: 10 000 scattered 16 KiB ranges of the layer (random gaps, fixed seed),
  each compared by sha256 with the local copy: ``RangeFetcher`` (merged spans,
  multi-range requests) beside a naive aiohttp client sending one ``Range`` request
  per range, 8 in flight.  Requests and response bytes come from the server's access
  log (docker-registry's combined log; ``chunkah serve``'s access lines on stderr).

Prints Markdown tables and writes benchmarks/results/bench_registry.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from common import RESULTS_DIR, machine_info, markdown_table, write_json  # noqa: E402
from support.registry import free_port, start_registry  # noqa: E402

from chunkah.registry.client import RegistryClient  # noqa: E402
from chunkah.registry.fetcher import RangeFetcher, RangeOptions  # noqa: E402
from chunkah.registry.reference import parse_registry_reference  # noqa: E402
from chunkah.registry.transfer import pull_image, push_image  # noqa: E402

MiB = 1 << 20
GB = 1e9
REPO_NAME = "bench/blob"
TAG = "v1"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


# -- the test image ------------------------------------------------------------------


def _real_binaries(budget: int) -> list[Path]:
    """Regular files from /usr/bin and /usr/lib, largest first, up to ``budget`` bytes."""
    found: list[tuple[int, str]] = []
    for top in ("/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    if os.path.isfile(p) and not os.path.islink(p):
                        found.append((os.path.getsize(p), p))
                except OSError:
                    continue
    found.sort(key=lambda t: (-t[0], t[1]))
    out, used = [], 0
    for size, p in found:
        if size and used + size <= budget:
            out.append(Path(p))
            used += size
    return out


def make_image(layout: Path, size: int, seed: int = 6) -> dict[str, Any]:
    """An OCI layout holding one image whose single layer is an uncompressed tar of ~size."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tar_path = layout / "layer.tar"
    binaries = _real_binaries(size // 8)
    rng = random.Random(seed)
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in binaries:
            info = tar.gettarinfo(str(p), arcname=f"usr/{len(tar.getmembers())}-{p.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 1700000000
            with p.open("rb") as f:
                tar.addfile(info, f)
        used = sum(m.size + 1536 for m in tar.getmembers()) + 10240
        info = tarfile.TarInfo("random.bin")
        info.size = max(0, size - used)
        info.mtime = 1700000000
        info.mode = 0o644

        class _Random:
            def __init__(self, n: int) -> None:
                self.left = n

            def read(self, n: int = -1) -> bytes:
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return rng.randbytes(n)

        tar.addfile(info, _Random(info.size))  # type: ignore[arg-type]
    layer_digest = "sha256:" + _sha256_file(tar_path)
    layer_size = tar_path.stat().st_size
    tar_path.rename(blobs / layer_digest.split(":")[1])
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {},
        },
        sort_keys=True,
    ).encode()
    config_digest = _write_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [{"mediaType": LAYER_TAR, "digest": layer_digest, "size": layer_size}],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _write_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return {
        "layer_digest": layer_digest,
        "layer_size": layer_size,
        "layer_path": str(blobs / layer_digest.split(":")[1]),
        "binaries": len(binaries),
        "binary_bytes": sum(p.stat().st_size for p in binaries),
        "manifest_digest": manifest_digest,
    }


def _write_blob(blobs: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return "sha256:" + hexd


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def scattered_ranges(size: int, count: int, length: int, seed: int = 16) -> list[tuple[int, int]]:
    """``count`` non-overlapping ranges of ``length`` bytes spread over the blob.

    The free space is cut into ``count + 1`` gaps with exponentially distributed
    weights, so a few neighbours nearly touch (and merge) and most do not.
    """
    free = size - count * length
    if free < 0:
        raise SystemExit(f"{count} ranges of {length} bytes do not fit in {size} bytes")
    rng = random.Random(seed)
    weights = [rng.expovariate(1.0) for _ in range(count + 1)]
    scale = free / sum(weights)
    out, pos = [], 0
    for w in weights[:-1]:
        pos += int(w * scale)
        out.append((pos, length))
        pos += length
    return out


# -- servers -------------------------------------------------------------------------

# 127.0.0.1 "GET /v2/bench/blob/blobs/sha256:... " 206 16384 "bytes=0-1" 0.001s
_CHUNKAH_ACCESS = re.compile(
    r'^\S+ "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) (?P<bytes>\d+)'
)


@dataclass
class Server:
    """A registry under test: how to reach it and how to read its access log."""

    name: str
    host: str
    log: Path
    stop: Callable[[], None]
    kind: str  # "docker-registry" or "chunkah"
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_mark(self) -> int:
        _settle(self.log)
        return self.log.stat().st_size

    def blob_requests(self, since: int) -> tuple[int, int, dict[str, int]]:
        """(blob GETs, response body bytes of them, statuses) logged after ``since``."""
        _settle(self.log)
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        if self.kind == "docker-registry":
            from support.registry import parse_access_log

            rows = [(e.method, e.path, e.status, e.bytes) for e in parse_access_log(text)]
        else:
            rows = []
            for line in text.splitlines():
                m = _CHUNKAH_ACCESS.match(line)
                if m:
                    rows.append((m["method"], m["path"], int(m["status"]), int(m["bytes"])))
        blob = [r for r in rows if r[0] == "GET" and "/blobs/sha256:" in r[1]]
        statuses: dict[str, int] = {}
        for r in blob:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        return len(blob), sum(r[3] for r in blob), statuses


def _settle(path: Path, quiet: float = 0.2, limit: float = 5.0) -> None:
    """Wait until a log has stopped growing (servers log after the response)."""
    deadline = time.monotonic() + limit
    size, since = path.stat().st_size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.03)
        now = path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def start_docker_registry(work: Path) -> Server:
    reg = start_registry(work / "docker-registry")
    return Server("docker-registry", reg.host, reg.access_log, reg.stop, "docker-registry", reg.pid)


def start_chunkah_serve(work: Path) -> Server:
    root = work / "chunkah-serve"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / "chunkah-serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunkah", "serve", str(root), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
    deadline = time.monotonic() + 30
    while "serving" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"chunkah serve did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    return Server("chunkah serve", f"127.0.0.1:{port}", log, stop, "chunkah", proc.pid)


# -- measurements --------------------------------------------------------------------


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


def _run(argv: Sequence[str], **kw: Any) -> None:
    proc = subprocess.run(argv, capture_output=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (curl, skopeo)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Case:
    """One way of fetching the whole blob from one server."""

    server: str
    what: str
    run: Callable[[], object]
    bytes_per_run: int
    srv: Server
    times: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    def measure(self, scratch: Path) -> None:
        s0, c0, t0 = self.srv.cpu_seconds(), _own_cpu(), time.perf_counter()
        self.run()
        self.times.append(time.perf_counter() - t0)
        self.client_cpu.append(_own_cpu() - c0)
        self.server_cpu.append(self.srv.cpu_seconds() - s0)
        clear(scratch)

    def row(self) -> dict[str, Any]:
        med = statistics.median(self.times)
        return {
            "server": self.server,
            "what": self.what,
            "seconds": self.times,
            "median_s": med,
            "gb_per_s": self.bytes_per_run / med / GB,
            "client_cpu_s": self.client_cpu,
            "median_client_cpu_s": statistics.median(self.client_cpu),
            "server_cpu_s": self.server_cpu,
            "median_server_cpu_s": statistics.median(self.server_cpu),
        }


def clear(scratch: Path) -> None:
    """Remove what a run wrote (a file, a layout) so the next one starts alike."""
    for p in scratch.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def whole_blob_cases(srv: Server, image: dict[str, Any], scratch: Path) -> list[Case]:
    ref = parse_registry_reference(f"docker://{srv.host}/{REPO_NAME}:{TAG}")
    digest, size = image["layer_digest"], image["layer_size"]
    blob_url = f"{srv.url}/v2/{REPO_NAME}/blobs/{digest}"
    out_file = scratch / "blob.out"
    out_dir = scratch / "pulled"

    async def ours(sink_file: bool) -> None:
        async with RegistryClient(plain_http=True, auth_files=False) as client:
            if sink_file:
                with out_file.open("wb") as f:
                    await client.download_blob(ref, digest, f, size=size)
            else:
                await client.download_blob(ref, digest, _Discard(), size=size)

    async def bare_aiohttp() -> None:
        # The least an aiohttp client does: read the body, no hash, no sink.
        n = 0
        async with (
            aiohttp.ClientSession(auto_decompress=False, read_bufsize=MiB) as session,
            session.get(blob_url) as resp,
        ):
            async for chunk in resp.content.iter_any():
                n += len(chunk)
        if n != size:
            raise SystemExit(f"bare aiohttp read {n} of {size} bytes")

    async def ours_pull() -> None:
        async with RegistryClient(plain_http=True, auth_files=False) as client:
            await pull_image(client, ref, f"oci:{out_dir}:{TAG}")

    def skopeo() -> None:
        _run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{srv.host}/{REPO_NAME}:{TAG}",
                f"oci:{out_dir}:{TAG}",
            ]
        )

    def curl(target: str) -> None:
        _run(["curl", "-sSf", "-o", target, blob_url])

    def curl_sha() -> None:
        # openssl, not coreutils' sha256sum: 9.1 has no SHA-NI code (0.19 GB/s here).
        out = subprocess.run(
            f"curl -sSf {blob_url} | openssl dgst -sha256 -r",
            shell=True,
            capture_output=True,
            check=True,
        ).stdout.decode()
        if "sha256:" + out.split()[0] != digest:
            raise SystemExit("curl | openssl dgst -sha256: wrong digest")

    s = srv.name
    return [
        Case(
            s,
            "chunkah download_blob → discard (sha256)",
            lambda: asyncio.run(ours(False)),
            size,
            srv,
        ),
        Case(
            s,
            "chunkah download_blob → file (sha256)",
            lambda: asyncio.run(ours(True)),
            size,
            srv,
        ),
        Case(s, "chunkah pull_image → oci:DIR", lambda: asyncio.run(ours_pull()), size, srv),
        Case(s, "skopeo copy → oci:DIR", skopeo, size, srv),
        Case(s, "bare aiohttp read loop (no hash)", lambda: asyncio.run(bare_aiohttp()), size, srv),
        Case(s, "curl -o /dev/null (no hash)", lambda: curl("/dev/null"), size, srv),
        Case(s, "curl -o FILE (no hash)", lambda: curl(str(out_file)), size, srv),
        Case(s, "curl | openssl dgst -sha256", curl_sha, size, srv),
    ]


async def naive_ranges(
    url: str, ranges: Sequence[tuple[int, int]], expect: Sequence[bytes], concurrency: int
) -> int:
    """One GET with one Range per range, ``concurrency`` in flight; returns failures."""
    sem = asyncio.Semaphore(concurrency)
    bad = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as session:

        async def one(i: int) -> None:
            nonlocal bad
            off, n = ranges[i]
            async with (
                sem,
                session.get(
                    url,
                    headers={"Range": f"bytes={off}-{off + n - 1}", "Accept-Encoding": "identity"},
                ) as resp,
            ):
                body = await resp.read()
                if resp.status != 206 or hashlib.sha256(body).digest() != expect[i]:
                    bad += 1

        await asyncio.gather(*(one(i) for i in range(len(ranges))))
    return bad


async def fetcher_ranges(
    host: str,
    digest: str,
    size: int,
    ranges: Sequence[tuple[int, int]],
    expect: Sequence[bytes],
    options: RangeOptions,
) -> dict[str, Any]:
    ref = parse_registry_reference(f"docker://{host}/{REPO_NAME}:{TAG}")
    got = 0

    def check(i: int, data: bytes) -> bool:
        return hashlib.sha256(data).digest() == expect[i]

    async with RegistryClient(plain_http=True, auth_files=False) as client:
        async with RangeFetcher(client, ref, digest, size, options=options, check=check) as f:
            async for _r in f.fetch(ranges):
                got += 1
        stats = client.stats.to_dict()
    if got != len(ranges):
        raise SystemExit(f"RangeFetcher returned {got} of {len(ranges)} ranges")
    return stats


def range_cases(
    srv: Server,
    image: dict[str, Any],
    ranges: list[tuple[int, int]],
    expect: list[bytes],
    runs: int,
    concurrency: int,
) -> list[dict[str, Any]]:
    digest, size = image["layer_digest"], image["layer_size"]
    url = f"{srv.url}/v2/{REPO_NAME}/blobs/{digest}"
    wanted = sum(n for _o, n in ranges)
    variants: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            f"naive: 1 request per range, {concurrency} in flight",
            lambda: naive_ranges(url, ranges, expect, concurrency),
        ),
        (
            "RangeFetcher (defaults: 4 in flight, ≤256 spans/request)",
            lambda: fetcher_ranges(srv.host, digest, size, ranges, expect, RangeOptions()),
        ),
        (
            f"RangeFetcher ({concurrency} in flight)",
            lambda: fetcher_ranges(
                srv.host, digest, size, ranges, expect, RangeOptions(concurrency=concurrency)
            ),
        ),
        (
            "RangeFetcher (merge_gap 64 KiB: fewer parts, more bytes)",
            lambda: fetcher_ranges(
                srv.host, digest, size, ranges, expect, RangeOptions(merge_gap=64 << 10)
            ),
        ),
    ]
    rows: dict[str, dict[str, Any]] = {
        name: {"server": srv.name, "what": name, "seconds": []} for name, _ in variants
    }
    for _ in range(runs):
        for name, make in variants:
            mark = srv.log_mark()
            cpu0, own0, t0 = srv.cpu_seconds(), _own_cpu(), time.perf_counter()
            result = asyncio.run(make())  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            server_cpu, client_cpu = srv.cpu_seconds() - cpu0, _own_cpu() - own0
            requests, wire, statuses = srv.blob_requests(mark)
            row = rows[name]
            row["seconds"].append(seconds)
            row.setdefault("server_cpu_s", []).append(server_cpu)
            row.setdefault("client_cpu_s", []).append(client_cpu)
            row["requests"], row["wire_bytes"], row["statuses"] = requests, wire, statuses
            if isinstance(result, int):
                if result:
                    raise SystemExit(f"{name}: {result} ranges failed verification")
            else:
                row["client_stats"] = result
    for row in rows.values():
        row["median_s"] = statistics.median(row["seconds"])
        row["median_server_cpu_s"] = statistics.median(row["server_cpu_s"])
        row["median_client_cpu_s"] = statistics.median(row["client_cpu_s"])
        row["wanted_bytes"] = wanted
        row["wire_over_wanted"] = row["wire_bytes"] / wanted
    return list(rows.values())


# -- main ----------------------------------------------------------------------------


def sha256_speed(path: Path) -> float:
    """hashlib sha256 of the blob in memory, 1 MiB at a time (median of 3), GB/s."""
    data = memoryview(path.read_bytes())
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for i in range(0, len(data), MiB):
            h.update(data[i : i + MiB])
        times.append(time.perf_counter() - t0)
    return len(data) / statistics.median(times) / GB


def loadavg() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5, help="runs of each whole-blob case")
    ap.add_argument("--range-runs", type=int, default=3, help="runs of each range case")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--ranges", type=int, default=10_000)
    ap.add_argument("--range-kib", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8, help="naive client's requests in flight")
    ap.add_argument("--servers", default="docker-registry,chunkah")
    ap.add_argument("--skip", default="", help="comma list: whole,ranges")
    ap.add_argument(
        "--name", default="bench_registry", help="results file stem under benchmarks/results/"
    )
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-registry-", dir=RESULTS_DIR))
    work.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    try:
        t0 = time.perf_counter()
        image = make_image(work / "layout", args.size_mib * MiB)
        print(
            f"image: one {image['layer_size'] / MiB:.1f} MiB tar layer "
            f"({image['binaries']} binaries, {image['binary_bytes'] / MiB:.1f} MiB; the rest random) "
            f"in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        wanted = set(args.servers.split(","))
        if "docker-registry" in wanted:
            servers.append(start_docker_registry(work))
        if "chunkah" in wanted:
            servers.append(start_chunkah_serve(work))
        for srv in servers:

            async def push(host: str) -> None:
                async with RegistryClient(plain_http=True, auth_files=False) as client:
                    await push_image(
                        client, f"oci:{work / 'layout'}:{TAG}", f"docker://{host}/{REPO_NAME}:{TAG}"
                    )

            asyncio.run(push(srv.host))
        scratch = work / "scratch"
        scratch.mkdir(exist_ok=True)
        image["sha256_gb_per_s"] = sha256_speed(Path(image["layer_path"]))
        load_before = loadavg()
        whole: list[dict[str, Any]] = []
        if "whole" not in skip:
            cases = [c for srv in servers for c in whole_blob_cases(srv, image, scratch)]
            for c in cases:  # warm-up: page cache, connections, skopeo's first start
                c.run()
                clear(scratch)
            for r in range(args.runs):
                for c in cases:
                    c.measure(scratch)
                print(
                    f"whole blob: run {r + 1}/{args.runs} done (load {loadavg():.2f})",
                    file=sys.stderr,
                )
            whole = [c.row() for c in cases]
            shutil.rmtree(scratch, ignore_errors=True)
        ranges_rows: list[dict[str, Any]] = []
        if "ranges" not in skip:
            ranges = scattered_ranges(image["layer_size"], args.ranges, args.range_kib * 1024)
            with open(image["layer_path"], "rb") as f:
                expect = [hashlib.sha256(os.pread(f.fileno(), n, o)).digest() for o, n in ranges]
            for srv in servers:
                ranges_rows += range_cases(
                    srv, image, ranges, expect, args.range_runs, args.concurrency
                )
                print(f"ranges: {srv.name} done (load {loadavg():.2f})", file=sys.stderr)
        load_after = loadavg()
    finally:
        for srv in servers:
            srv.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(args, image, whole, ranges_rows, (load_before, load_after))


def report(
    args: argparse.Namespace,
    image: dict[str, Any],
    whole: list[dict[str, Any]],
    ranges_rows: list[dict[str, Any]],
    load: tuple[float, float],
) -> None:
    info = machine_info()
    lines = [
        f"Registry transfers over loopback, {info['date']}, {info['cpu']} ({info['cores']} cores), "
        f"Python {info['python']}; medians of "
        + " and ".join(
            [f"{args.runs} runs (whole blob)"] * bool(whole)
            + [f"{args.range_runs} runs (ranges)"] * bool(ranges_rows)
        )
        + f"; 1-min load average {load[0]:.2f} → {load[1]:.2f}.",
        "",
    ]
    if whole:
        lines += [
            f"Whole blob: one {image['layer_size'] / MiB:.1f} MiB layer "
            f"({image['layer_size']} bytes; random bytes plus {image['binaries']} binaries). "
            f"hashlib sha256 alone: {image['sha256_gb_per_s']:.2f} GB/s. CPU seconds are "
            "user + system of the client process(es) and of the server process.",
            "",
            markdown_table(
                ["server", "client", "seconds", "GB/s", "client CPU s", "server CPU s"],
                [
                    [
                        r["server"],
                        r["what"],
                        f"{r['median_s']:.3f}",
                        f"{r['gb_per_s']:.2f}",
                        f"{r['median_client_cpu_s']:.2f}",
                        f"{r['median_server_cpu_s']:.2f}",
                    ]
                    for r in whole
                ],
            ),
            "",
        ]
    if ranges_rows:
        lines += [
            f"Ranges: {args.ranges} scattered ranges of {args.range_kib} KiB "
            f"({args.ranges * args.range_kib / 1024:.0f} MiB wanted), each sha256-checked; "
            "requests and bytes from the server's access log (blob GETs).",
            "",
            markdown_table(
                [
                    "server",
                    "client",
                    "seconds",
                    "client CPU s",
                    "server CPU s",
                    "requests",
                    "MiB on the wire",
                    "wire / wanted",
                ],
                [
                    [
                        r["server"],
                        r["what"],
                        f"{r['median_s']:.2f}",
                        f"{r['median_client_cpu_s']:.2f}",
                        f"{r['median_server_cpu_s']:.2f}",
                        r["requests"],
                        f"{r['wire_bytes'] / MiB:.1f}",
                        f"{r['wire_over_wanted']:.2f}",
                    ]
                    for r in ranges_rows
                ],
            ),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.md").write_text(text + "\n")
    path = write_json(
        args.name,
        {
            "machine": info,
            "runs": args.runs,
            "range_runs": args.range_runs,
            "load_average": load,
            "image": image,
            "whole_blob": whole,
            "ranges": ranges_rows,
            "range_setup": {
                "count": args.ranges,
                "length": args.range_kib * 1024,
                "naive_concurrency": args.concurrency,
            },
        },
    )
    print(f"JSON: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
