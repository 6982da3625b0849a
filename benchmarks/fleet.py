#!/usr/bin/env python3
"""Fleet scale: N simulated hosts updating v1 -> v2 at once against one registry.

    python benchmarks/fleet.py [--profile quick|full] [--hosts 10,100,1000]
                               [--servers chunkah,registry,cdn,cdn-1range]
                               [--strategies layers,chunks,full] [--workers 2]
                               [--jitter SECONDS] [--jitter-rows S/STRAT/N/SECONDS,...]
                               [--series synthetic|tiny|app] [--step K] [--verify]
                               [--work DIR] [--name NAME]
    python benchmarks/fleet.py --ladder --series app     # the fallback ladder's cost

Every simulated host is a coroutine with its own :class:`RegistryClient` (its own
connection pool, at most 16 connections) and its own small inventory: the v1
image's layers and chunks, known from v1's TOCs (no sysroot on disk).  The hosts
are spread over ``--workers`` long-lived processes; all of them start together (a
wave) unless ``--jitter`` spreads their starts (``retry.start_delay``).  What a host
sends is what ``chunkah update`` sends, through the same code:

- **chunks**: ``RegistryClient.resolve`` (manifest + config), one range request per
  new layer's TOC (``RangeFetcher``; TOCs of layers the host has are cached, as
  ``chunkah update`` caches them; each host checks its TOC bytes' sha256, the
  decoding is shared), the delta discovery ``chunkah update`` makes (``find_deltas``:
  the referrers API, or its tag fallback; none is published), ``plan_update`` against the inventory (made once per wave and
  worker: every host has the same inventory, so the same plan), then the plan's
  ranges through ``RangeFetcher`` per layer, 3 layers at a time -- ``fetch_plan``'s
  requests.  With ``--verify`` it is ``fetch_plan`` itself, every chunk
  decompressed and sha256-checked; without (the default), the bytes are read and
  dropped: the requests are the same, the check only costs the simulator's CPU;
- **layers**: resolve, then every layer v1 does not have downloaded whole with
  ``download_blob`` (sha256-verified), 3 at a time: what a layer-based client such
  as ``podman pull`` costs for chunkah-style (package-sorted) layers;
- **full** (optional): every layer of v2, as a fresh host would.

Registries, all on 127.0.0.1:

- ``chunkah``: ``python -m chunkah serve`` (one process, one event loop);
- ``registry``: Debian's ``docker-registry`` (distribution 2.8, Go);
- ``cdn``: ``nginx`` (one worker) in front of that docker-registry, configured as a
  CDN edge: blobs cached (``proxy_cache``, filled once per blob with
  ``proxy_cache_lock``; nginx then answers ranges itself), stock 8 KiB header
  buffers and ``max_ranges 16`` (more ranges in one request get 200 and the whole
  blob); manifests passed through;
- ``cdn-1range``: the same with ``max_ranges 1`` (every multi-range request gets the
  whole blob).

Per (server, strategy, N): updates finished, errors, p50/p99 time to finish one
update (from the host's start, jitter excluded), the wave's makespan, updates/s,
requests/s and bytes/s over the makespan (client-side counts: every request, retries
included), server CPU seconds and ms per update (from ``/proc``: nginx and
docker-registry together for the cdn rows), server RSS at the start and its peak,
peak open file descriptors (sampled every 0.1 s), client CPU; and per (server,
strategy) the knee: the smallest N reaching 80 % of the peak update rate.

``--ladder`` runs no wave: from the series' real plan and the client's own request
packing it prints the bytes and requests of one update for each way a front can
answer multi-range requests (docs/scale.md, section 3).

Profiles: ``quick`` (``make bench-fleet-quick``): a synthetic tree of 14 components
(generated here, about 6 MB; v2 changes 5 of them), built with ``chunkah build`` at
zstd level 3; chunkah serve, docker-registry and the cdn; N = 10 and 100 -- about a
minute.  ``full`` (``make bench-fleet``): the tiny Debian series
(benchmarks/series.py, v1 -> v2) built with ``chunkah build`` defaults, N = 10, 30,
100, 300, 1000, plus two jittered rows -- about 15 minutes.

Writes ``benchmarks/results/<name>.{json,md,png}`` (name: ``fleet`` or
``fleet-quick``); the PNG plots p99 (and p50) against N per server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from common import RESULTS_DIR, machine_info, markdown_table, write_json  # noqa: E402

EPOCH = 1_700_000_000
REPO_NAME = "fleet/app"
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "hosts": [10, 100],
        "servers": ["chunkah", "registry", "cdn"],
        "strategies": ["layers", "chunks"],
        "series": "synthetic",
    },
    "full": {
        "hosts": [10, 30, 100, 300, 1000],
        "servers": ["chunkah", "registry", "cdn"],
        "strategies": ["layers", "chunks"],
        "series": "tiny",
        "jitter_rows": "chunkah/chunks/1000/60,registry/chunks/1000/150",
    },
}
HOST_TIMEOUT = 180.0  # one simulated update
WAVE_TIMEOUT = 420.0  # one wave, every worker
MB = 1e6


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (1000 hosts hold thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ===================================================================================
# The simulated host (runs in worker processes)
# ===================================================================================


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


class _DiscardStore:
    """A chunk store that keeps only the digests (the bytes were verified and dropped)."""

    def __init__(self) -> None:
        self._have: set[bytes] = set()

    def has(self, sha256: bytes) -> bool:
        return sha256 in self._have

    def put(self, sha256: bytes, data: bytes) -> None:
        self._have.add(sha256)


def _toc_position(desc: Any) -> tuple[int, int, int, str]:
    from chunkah.format.writer import ANNOTATION_TOC_DIGEST, ANNOTATION_TOC_POSITION

    pos = desc.annotations.get(ANNOTATION_TOC_POSITION)
    digest = desc.annotations.get(ANNOTATION_TOC_DIGEST)
    if pos is None or digest is None:
        raise SystemExit(f"layer {desc.digest} has no chunkah TOC: fleet images are chunkah's")
    offset, length, body = (int(x) for x in pos.split(":"))
    return offset, length, body, digest


class Shared:
    """What every simulated host of a worker starts from: v1's layer indexes (the
    inventory) and a cache of decoded TOCs keyed by their digest (each host still
    fetches its TOC bytes and checks their sha256; only the decoding is shared)."""

    def __init__(self, v1_layout: Path, v1_tag: str) -> None:
        from chunkah.format.toc import decode_toc_frame
        from chunkah.host.index import index_from_toc
        from chunkah.host.plan import inventory_from_indexes
        from chunkah.oci import OciLayout, resolve_image

        layout = OciLayout(v1_layout)
        image = resolve_image(layout, v1_tag)
        self.v1_digest = image.digest  # the host's current manifest
        self.v1_layers: dict[str, Any] = {}
        indexes = []
        for i, desc in enumerate(image.manifest.layers):
            offset, length, body, toc_digest = _toc_position(desc)
            with layout.blob_path(desc.digest).open("rb") as f:
                f.seek(offset)
                frame = f.read(length)
            toc = decode_toc_frame(
                frame, expected_digest=toc_digest, body_size=body, toc_offset=offset
            )
            ix = index_from_toc(
                toc, digest=desc.digest, diff_id=image.config.diff_ids[i], blob_size=desc.size,
                media_type=desc.media_type,
            )  # fmt: skip
            self.v1_layers[desc.digest] = ix
            indexes.append(ix)
        self.inventory = inventory_from_indexes(indexes)
        self._decoded: dict[str, Any] = {}
        self.plans: dict[tuple[str, ...], Any] = {}
        self.verify = False

    def index(self, desc: Any, diff_id: str, frame: bytes, pos: tuple[int, int, int, str]) -> Any:
        from chunkah.format.toc import decode_toc_frame
        from chunkah.host.index import index_from_toc

        offset, length, body, toc_digest = pos
        if "sha256:" + hashlib.sha256(frame).hexdigest() != toc_digest:
            raise RuntimeError(f"layer {desc.digest}: TOC bytes do not match their digest")
        ix = self._decoded.get(toc_digest)
        if ix is None:
            toc = decode_toc_frame(
                frame, expected_digest=toc_digest, body_size=body, toc_offset=offset
            )
            ix = self._decoded[toc_digest] = index_from_toc(
                toc, digest=desc.digest, diff_id=diff_id, blob_size=desc.size,
                media_type=desc.media_type, toc_bytes=length,
            )  # fmt: skip
        return ix


async def _update_chunks(client: Any, ref: Any, shared: Shared) -> None:
    from chunkah.host.fetch import fetch_plan
    from chunkah.host.plan import plan_update
    from chunkah.registry.fetcher import RangeFetcher

    image = await client.resolve(ref)
    diff_ids = image.config.diff_ids

    async def index(i: int, desc: Any) -> Any:
        known = shared.v1_layers.get(desc.digest)
        if known is not None:
            return known  # the TOC cache of a host that runs v1
        pos = _toc_position(desc)
        async with RangeFetcher(client, image.reference, desc.digest, desc.size) as fetcher:
            (frame,) = await fetcher.fetch_all([(pos[0], pos[1])])
        return shared.index(desc, diff_ids[i], frame, pos)

    indexes = list(
        await asyncio.gather(*(index(i, d) for i, d in enumerate(image.manifest.layers)))
    )
    # chunkah update looks for a delta artifact (current -> target) before planning: the
    # referrers API (chunkah serve) or its tag fallback (docker-registry: two 404s).
    # None is published here, so the update goes on with chunks, as it would.
    from chunkah.delta.artifact import find_deltas
    from chunkah.errors import ChunkahError

    with contextlib.suppress(ChunkahError):
        await find_deltas(client, image.reference, image.digest, shared.v1_digest)
    # Every host of the fleet has the same inventory, so the same plan: it is made once
    # per wave and worker (tens of ms of client CPU per host that the registry never sees).
    key = tuple(ix.digest for ix in indexes)
    plan = shared.plans.get(key)
    if plan is None:
        plan = shared.plans[key] = plan_update(indexes, shared.inventory)
    if shared.verify:
        await fetch_plan(client, image.reference, indexes, plan, _DiscardStore())
        return
    # The same requests as fetch_plan (its grouping by layer, 3 layers at a time, the
    # fetcher's default options), without decompressing and hashing every chunk.
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for r in plan.fetch:
        by_layer.setdefault(r.layer, []).append((r.offset, r.length))
    gate = asyncio.Semaphore(3)

    async def layer(li: int) -> None:
        async with (
            gate,
            RangeFetcher(
                client, image.reference, indexes[li].digest, indexes[li].blob_size
            ) as fetcher,
        ):
            async for _ in fetcher.fetch(by_layer[li]):
                pass

    await asyncio.gather(*(layer(li) for li in sorted(by_layer)))


async def _update_layers(client: Any, ref: Any, shared: Shared, everything: bool) -> None:
    image = await client.resolve(ref)
    gate = asyncio.Semaphore(3)

    async def one(desc: Any) -> None:
        async with gate:
            await client.download_blob(image.reference, desc.digest, _Discard(), size=desc.size)

    todo = [d for d in image.manifest.layers if everything or d.digest not in shared.v1_layers]
    await asyncio.gather(*(one(d) for d in todo))


async def _host(
    number: int, strategy: str, ref_text: str, shared: Shared, delay: float
) -> dict[str, Any]:
    from chunkah.registry.client import RegistryClient
    from chunkah.registry.reference import parse_registry_reference

    await asyncio.sleep(delay)
    ref = parse_registry_reference(ref_text)
    started = time.monotonic()
    error = None
    client = RegistryClient(plain_http=True, auth_files=False)
    try:
        async with client:
            coro = (
                _update_chunks(client, ref, shared)
                if strategy == "chunks"
                else _update_layers(client, ref, shared, everything=strategy == "full")
            )
            await asyncio.wait_for(coro, HOST_TIMEOUT)
    except Exception as exc:  # an error of one host is a result, not the end of the wave
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    s = client.stats
    return {
        "host": number,
        "delay": delay,
        "seconds": time.monotonic() - started,
        "finished_at": time.time(),
        "error": error,
        "requests": s.requests,
        "bytes": s.bytes_received,
        "retries": s.retries,
        "fallbacks": s.fallbacks,
        "statuses": {str(k): v for k, v in s.status_counts.items()},
    }


async def _worker_main(v1_layout: str) -> None:
    """Serve waves until stdin closes.  Per wave: a spec line (JSON) -> "ready" ->
    the orchestrator's "go" -> one JSON line of results."""
    # Import now: a host's first request must not pay for module loading.
    import chunkah.delta.artifact
    import chunkah.host.fetch
    import chunkah.host.plan
    import chunkah.registry.client
    import chunkah.registry.fetcher
    import chunkah.registry.reference  # noqa: F401
    from chunkah.registry.retry import start_delay

    shared = Shared(Path(v1_layout), "v1")
    loop = asyncio.get_running_loop()

    async def line() -> str:
        return str(await loop.run_in_executor(None, sys.stdin.readline))

    while spec_text := (await line()).strip():
        spec = json.loads(spec_text)
        rng = random.Random(spec["seed"])
        delays = [start_delay(spec["jitter"], rng) for _ in spec["hosts"]]
        shared._decoded = {}  # each wave decodes its TOCs and plans afresh
        shared.plans = {}
        shared.verify = bool(spec.get("verify"))
        print("ready", flush=True)
        if (await line()).strip() != "go":
            return
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.time()
        results = await asyncio.gather(
            *(
                _host(n, spec["strategy"], spec["ref"], shared, d)
                for n, d in zip(spec["hosts"], delays, strict=True)
            )
        )
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        print(json.dumps({"started": t0, "cpu": cpu, "hosts": results}), flush=True)


def worker(v1_layout: str) -> None:
    raise_fd_limit()
    prof_dir = os.environ.get("CHUNKAH_FLEET_PROFILE")  # cProfile each worker (debugging)
    if prof_dir:
        import cProfile

        cProfile.runctx("asyncio.run(_worker_main(v1))", globals(), {"v1": v1_layout},
                        os.path.join(prof_dir, f"worker-{os.getpid()}.prof"))  # fmt: skip
        return
    asyncio.run(_worker_main(v1_layout))


class Workers:
    """``count`` long-lived client processes (started once: imports and the v1
    inventory cost about a second each)."""

    def __init__(self, count: int, v1_layout: str) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", v1_layout],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for _ in range(count)
        ]

    def send(self, proc: subprocess.Popen[str], text: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(text + "\n")
        proc.stdin.flush()

    def read(self, proc: subprocess.Popen[str], timeout: float) -> str:
        assert proc.stdout is not None
        import select

        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        text = proc.stdout.readline() if ready else ""
        if not text:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise SystemExit(
                f"fleet worker {proc.pid} gave no answer in {timeout:g} s\n{err[-3000:]}"
            )
        return text.strip()

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                if p.stdin is not None:
                    p.stdin.close()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)


# ===================================================================================
# The orchestrator: images, servers, waves, report
# ===================================================================================


def _run(argv: Sequence[str], *, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def synthetic_trees(work: Path) -> tuple[Path, Path]:
    """Two versions of a small tree of 14 components (``user.component`` xattrs, so
    ``chunkah build`` gives each its layer): ~6 MB of files, compressible text and
    binary-like bytes.  v2 patches a region of one binary, the tail of one library,
    a config file, adds a file to one component and drops one from another."""
    rng = random.Random(11)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]  # fmt: skip

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        return bytes(out[:n])

    def binary(n: int) -> bytes:
        # Half random, half repetitive: compresses about 2:1, as executables do.
        return b"".join(
            rng.randbytes(4096) if i % 2 else bytes([i % 251]) * 4096 for i in range(n // 4096)
        )

    files: dict[str, tuple[str, bytes]] = {}
    for i in range(12):
        files[f"usr/lib/pkg{i}/lib{i}.so"] = (f"pkg{i}", binary(rng.choice([128, 256, 512]) << 10))
        for j in range(5):
            files[f"usr/share/doc/pkg{i}/doc{j}.txt"] = (f"pkg{i}", text(rng.randint(500, 40_000)))
    files["usr/bin/tool"] = ("tool", binary(1 << 20))
    files["etc/tool.conf"] = ("tool-config", text(3000))
    v1 = work / "tree-v1"
    v2 = work / "tree-v2"
    for root, content in ((v1, files), (v2, _v2_files(files, rng, text))):
        for rel, (component, data) in content.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.setxattr(path, "user.component", component.encode())
        for dirpath, _dirs, names in os.walk(root):
            for entry in (dirpath, *(os.path.join(dirpath, n) for n in names)):
                os.utime(entry, (EPOCH, EPOCH))
    return v1, v2


def _v2_files(
    files: dict[str, tuple[str, bytes]], rng: random.Random, text: Callable[[int], bytes]
) -> dict[str, tuple[str, bytes]]:
    new = dict(files)
    comp, tool = new["usr/bin/tool"]
    patched = bytearray(tool)
    patched[300_000:300_000] = rng.randbytes(2000)  # a patched function: one region shifts
    new["usr/bin/tool"] = (comp, bytes(patched))
    comp, lib = new["usr/lib/pkg3/lib3.so"]
    new["usr/lib/pkg3/lib3.so"] = (comp, lib[:-5000] + rng.randbytes(5000))
    comp, conf = new["etc/tool.conf"]
    new["etc/tool.conf"] = (comp, conf + b"\nsecurity = on\n")
    new["usr/share/doc/pkg11/NEWS"] = ("pkg11", text(20_000))
    del new["usr/share/doc/pkg7/doc2.txt"]
    return new


def series_trees(name: str, step: int = 1) -> tuple[Path, Path]:
    """Versions ``step`` and ``step + 1`` of a series from benchmarks/series.py (built
    and cached there)."""
    out = _run([sys.executable, str(HERE / "series.py"), name], timeout=3600)
    dirs = [Path(line) for line in out.split()]
    return dirs[step - 1], dirs[step]


def build_images(v1: Path, v2: Path, work: Path, level: int | None) -> dict[str, Any]:
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    if level is not None:
        env["CHUNKAH_ZSTD_LEVEL"] = str(level)
    out: dict[str, Any] = {}
    for tag, src in (("v1", v1), ("v2", v2)):
        layout = work / f"image-{tag}"
        recipe = json.dumps({"src": str(src), "level": level})
        marker = work / f"image-{tag}.recipe"
        if marker.is_file() and marker.read_text() == recipe:  # a --work dir reused
            out[tag] = {"layout": str(layout), "build_s": None}
            continue
        shutil.rmtree(layout, ignore_errors=True)
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "chunkah", "build", str(src), "-o", f"oci:{layout}:{tag}",
              "-q"], env=env)  # fmt: skip
        marker.write_text(recipe)
        out[tag] = {"layout": str(layout), "build_s": round(time.perf_counter() - t0, 2)}
    from chunkah.oci import OciLayout, resolve_image

    images = {t: resolve_image(OciLayout(Path(out[t]["layout"])), t) for t in ("v1", "v2")}
    v1_layers = {d.digest for d in images["v1"].manifest.layers}
    v2_layers = images["v2"].manifest.layers
    out["v2_layers"] = len(v2_layers)
    out["v2_bytes"] = sum(d.size for d in v2_layers)
    out["new_layers"] = sum(d.digest not in v1_layers for d in v2_layers)
    out["new_layer_bytes"] = sum(d.size for d in v2_layers if d.digest not in v1_layers)
    return out


# -- servers ----------------------------------------------------------------------


@dataclass
class Server:
    name: str
    host: str  # 127.0.0.1:PORT
    pids: list[int]  # processes whose CPU, RSS and fds are counted
    stop: Callable[[], None]
    note: str = ""


def _stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} did not answer {url} within {timeout:g} s")


def start_chunkah(work: Path) -> Server:
    from support.registry import free_port

    root = work / "serve-root"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (work / "chunkah-serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkah", "serve", str(root), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    log.close()
    _wait_http(f"http://127.0.0.1:{port}/v2/", proc, "chunkah serve")
    return Server("chunkah", f"127.0.0.1:{port}", [proc.pid], lambda: _stop_pid(proc))


def start_docker_registry(work: Path) -> tuple[Server, Any]:
    from support.registry import start_registry

    reg = start_registry(work / "docker-registry")
    return Server("registry", reg.host, [reg.pid], reg.stop), reg


def nginx_cdn_config(work: Path, port: int, upstream: str, max_ranges: int) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
daemon off;
master_process off;
worker_rlimit_nofile 16384;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    log_format t '$request_method $uri $status $body_bytes_sent $upstream_cache_status';
    access_log {work}/access.log t;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    proxy_cache_path {work}/cache levels=1:2 keys_zone=blobs:16m max_size=4g inactive=1d
                     use_temp_path=off;
    # What CDN edges have: stock header buffers (a Range line above 8 KiB gets 400) and
    # a cap on ranges per request (more get 200 and the whole blob).
    large_client_header_buffers 4 8k;
    max_ranges {max_ranges};
    client_max_body_size 0;
    sendfile on;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # Blobs are immutable (named by digest): cached, filled once, ranges served here.
        location ~ /blobs/sha256: {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_cache blobs;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
        }}
        # Manifests (tags move), pings: passed through.
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
}}
"""


def start_cdn(work: Path, name: str, upstream: Server, max_ranges: int) -> Server:
    from support.registry import free_port

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(nginx_cdn_config(work, port, upstream.host, max_ranges))
    err = (work / "stderr.log").open("wb")
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(work), "-e", str(work / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    err.close()
    _wait_http(f"http://127.0.0.1:{port}/v2/", proc, "nginx")
    return Server(
        name,
        f"127.0.0.1:{port}",
        [proc.pid, *upstream.pids],
        lambda: _stop_pid(proc, signal.SIGQUIT),
        note=f"nginx (1 worker, cache, max_ranges {max_ranges}) + docker-registry",
    )


def push(layout: str, tag: str, host: str) -> None:
    from support.tools import skopeo_copy

    skopeo_copy(f"oci:{layout}:{tag}", f"docker://{host}/{REPO_NAME}:{tag}", preserve_digests=True)


# -- process metrics ---------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """Peak RSS and open fds of the server's processes, every 0.1 s, in a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.peak_rss = self.peak_fds = 0
        self.rss_series: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> tuple[int, int]:
        try:
            rss = sum(_rss_bytes(p) for p in self.pids)
            fds = sum(_fds(p) for p in self.pids)
        except OSError:
            return 0, 0
        self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
        return rss, fds

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.rss_series.append(self.sample()[0])

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


# -- one wave ----------------------------------------------------------------------


def _pctl(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def run_wave(
    server: Server,
    strategy: str,
    n: int,
    workers: Workers,
    jitter: float,
    seed: int,
    verify: bool = False,
) -> dict[str, Any]:
    ref = f"docker://{server.host}/{REPO_NAME}:v2"
    procs = workers.procs[: max(1, min(len(workers.procs), n))]
    w = len(procs)
    groups = [list(range(i, n, w)) for i in range(w)]
    for i, (p, hosts) in enumerate(zip(procs, groups, strict=True)):
        spec = {"ref": ref, "strategy": strategy, "hosts": hosts, "jitter": jitter,
                "seed": seed * 1000 + i, "verify": verify}  # fmt: skip
        workers.send(p, json.dumps(spec))
    for p in procs:
        if workers.read(p, 60) != "ready":
            raise SystemExit("fleet worker out of step")
    outputs: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    cpu0 = sum(_cpu_seconds(p) for p in server.pids)
    with Sampler(server.pids) as sampler:
        t0 = time.time()
        for p in procs:
            workers.send(p, "go")
        deadline = time.monotonic() + WAVE_TIMEOUT
        for p in procs:
            outputs.append(json.loads(workers.read(p, max(1.0, deadline - time.monotonic()))))
    cpu1 = sum(_cpu_seconds(p) for p in server.pids)
    hosts = [h for o in outputs for h in o["hosts"]]
    ok = [h for h in hosts if h["error"] is None]
    errors: dict[str, int] = {}
    for h in hosts:
        if h["error"] is not None:
            e = h["error"]
            key = e if len(e) <= 200 else e[:80] + " ... " + e[-115:]  # the reason is at the end
            errors[key] = errors.get(key, 0) + 1
    makespan = max(h["finished_at"] for h in hosts) - t0
    secs = [h["seconds"] for h in ok]
    requests = sum(h["requests"] for h in hosts)
    nbytes = sum(h["bytes"] for h in hosts)
    statuses: dict[str, int] = {}
    for h in hosts:
        for k, v in h["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    rss = sampler.rss_series
    return {
        "server": server.name,
        "strategy": strategy,
        "hosts": n,
        "workers": w,
        "jitter_s": jitter,
        "verify": verify,
        "ok": len(ok),
        "errors": len(hosts) - len(ok),
        "error_kinds": errors,
        "p50_s": _pctl(secs, 0.5),
        "p99_s": _pctl(secs, 0.99),
        "max_s": max(secs) if secs else float("nan"),
        "makespan_s": makespan,
        "updates_per_s": len(ok) / makespan if makespan > 0 else 0.0,
        "requests": requests,
        "requests_per_host": requests / n,
        "requests_per_s": requests / makespan if makespan > 0 else 0.0,
        "bytes": nbytes,
        "bytes_per_host": nbytes / n,
        "bytes_per_s": nbytes / makespan if makespan > 0 else 0.0,
        "retries": sum(h["retries"] for h in hosts),
        "fallbacks": sum(h["fallbacks"] for h in hosts),
        "statuses": statuses,
        "server_cpu_s": cpu1 - cpu0,
        "server_cpu_util": (cpu1 - cpu0) / makespan if makespan > 0 else 0.0,
        "server_cpu_ms_per_update": 1000 * (cpu1 - cpu0) / n,
        "server_peak_rss": sampler.peak_rss,
        "server_rss_start": rss[0] if rss else sampler.peak_rss,
        "server_rss_end": rss[-1] if rss else sampler.peak_rss,
        "server_peak_fds": sampler.peak_fds,
        "client_cpu_s": sum(o["cpu"] for o in outputs),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def knees(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per (server, strategy): the peak update rate and the knee, the smallest N that
    reaches 80 % of it (beyond the knee, more hosts only queue: p99 grows with N)."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted({(r["server"], r["strategy"]) for r in rows}):
        rs = sorted((r for r in rows if (r["server"], r["strategy"]) == key and r["jitter_s"] == 0),
                    key=lambda r: r["hosts"])  # fmt: skip
        if not rs:
            continue
        peak = max(r["updates_per_s"] for r in rs)
        knee = next(r["hosts"] for r in rs if r["updates_per_s"] >= 0.8 * peak)
        out[f"{key[0]}/{key[1]}"] = {
            "peak_updates_per_s": peak,
            "knee_hosts": knee,
            "saturated": rs[-1]["updates_per_s"] < 1.5 * rs[-2]["updates_per_s"]
            if len(rs) > 1
            else False,
        }
    return out


# -- the fallback ladder's cost, from a real plan ------------------------------------

#: Front behaviours for multi-range requests, as docs/registry-client.md's ladder meets them.
FRONTS = {
    "multipart": "multi-range answered (multipart/byteranges): the normal case",
    "cap16-200": "more than 16 ranges get 200 + the whole blob (nginx max_ranges 16)",
    "cap1-200": "any multi-range request gets 200 + the whole blob (max_ranges 1)",
    "one-part": "a multi-range request gets a 206 with one part: one range per request",
    "halve-416": "multi-range refused with 416/501: halved down to one range per request",
    "no-ranges": "Range ignored, 200 + the whole blob to every range request",
}


def ladder_costs(v1_layout: Path, v2_layout: Path) -> dict[str, Any]:
    """Bytes and requests of one host's update (v1 -> v2) for each front behaviour.

    The plan and the packing of its ranges into requests are the client's own
    (``plan_update``, ``merge_ranges``, ``plan_requests`` with ``RangeOptions``'
    defaults); what each answer costs follows the fallback ladder: the first span is a
    single-range probe, the largest planned request is the multi-range probe, a 200 is
    the whole blob (once per fetcher), 416/501 halve ``max_ranges``.  Per layer, the
    TOC is fetched by one fetcher and the chunks by another (``chunkah update`` as of
    this commit), so a front that ignores Range costs such a layer twice.
    """
    from chunkah.host.plan import plan_update
    from chunkah.oci import OciLayout, resolve_image
    from chunkah.registry.fetcher import RangeOptions
    from chunkah.registry.ranges import Span, merge_ranges, plan_requests

    shared = Shared(v1_layout, "v1")
    layout = OciLayout(v2_layout)
    image = resolve_image(layout, "v2")
    indexes = []
    for i, desc in enumerate(image.manifest.layers):
        known = shared.v1_layers.get(desc.digest)
        if known is None:
            pos = _toc_position(desc)
            with layout.blob_path(desc.digest).open("rb") as f:
                f.seek(pos[0])
                known = shared.index(desc, image.config.diff_ids[i], f.read(pos[1]), pos)
        indexes.append(known)
    plan = plan_update(indexes, shared.inventory)
    opts = RangeOptions()
    base_req = 2  # manifest + config
    base_bytes = len(image.manifest_bytes) + len(image.config_bytes)
    changed = [i for i, ix in enumerate(indexes) if ix.digest not in shared.v1_layers]
    toc_bytes = sum(indexes[i].toc_bytes for i in changed)
    spans_by_layer: dict[int, list[Span]] = {}
    for r in plan.fetch:
        spans_by_layer.setdefault(r.layer, []).append(Span(r.offset, r.offset + r.length))
    out: dict[str, Any] = {
        "layers": len(indexes),
        "changed_layers": len(changed),
        "changed_layer_bytes": sum(indexes[i].blob_size for i in changed),
        "image_bytes": sum(ix.blob_size for ix in indexes),
        "layers_with_ranges": len(spans_by_layer),
        "spans": sum(len(merge_ranges(v, max_gap=opts.merge_gap)) for v in spans_by_layer.values()),
        "fronts": {},
    }
    for front in FRONTS:
        req = base_req + len(changed)  # manifest, config, one TOC range per changed layer
        nbytes = base_bytes + toc_bytes
        for li, raw in spans_by_layer.items():
            spans = merge_ranges(raw, max_gap=opts.merge_gap)
            size = indexes[li].blob_size
            want = sum(sp.end - sp.start for sp in spans)
            if front == "no-ranges":
                # The TOC fetcher already downloaded the blob whole; the chunk fetcher does again.
                req += 1
                nbytes += size + size - indexes[li].toc_bytes
                continue
            req += 1  # the single-range probe (first span)
            rest = spans[1:]
            if not rest:
                nbytes += want
                continue
            groups = plan_requests(rest, max_ranges=opts.max_ranges,
                                   max_header_bytes=opts.max_header_bytes)  # fmt: skip
            cap = {"cap16-200": 16, "cap1-200": 1}.get(front)
            if cap is not None and max(len(g) for g in groups) > cap:
                req += 1  # the multi-range probe, answered 200: the whole blob
                nbytes += spans[0].end - spans[0].start + size
                continue
            if front == "one-part":
                # The multi-range probe comes back with one part, then one span a request.
                req += len(rest)
                nbytes += want
                continue
            if front == "halve-416":
                tries = 0
                k = max(len(g) for g in groups)
                while k > 1:
                    tries += 1  # each refused probe halves max_ranges
                    k = max(1, k // 2)
                req += tries + len(rest)
                nbytes += want
                continue
            req += len(groups)
            nbytes += want + 100 * len(rest)  # multipart framing: ~100 bytes a part
        out["fronts"][front] = {"requests": req, "bytes": nbytes}
    return out


def ladder_table(series: str, c: dict[str, Any]) -> str:
    base = c["fronts"]["multipart"]
    rows = [
        [front, FRONTS[front], v["requests"], f"{v['bytes'] / MB:.2f}",
         f"{v['bytes'] / base['bytes']:.2f}"]
        for front, v in c["fronts"].items()
    ]  # fmt: skip
    head = (
        f"{series} {c['changed_layers']} of {c['layers']} layers changed "
        f"({c['changed_layer_bytes'] / MB:.2f} of {c['image_bytes'] / MB:.2f} MB), "
        f"ranges in {c['layers_with_ranges']} layers, {c['spans']} spans after merging."
    )
    return (
        head
        + "\n\n"
        + markdown_table(
            ["front", "answers multi-range with", "requests", "MB", "x multipart"], rows
        )
    )


# -- report ------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["server", "strategy", "N", "ok", "err", "p50 s", "p99 s", "makespan s",
               "updates/s", "req/host", "req/s", "MB/host", "MB/s", "srv CPU s", "srv CPU %",
               "srv CPU ms/update",
               "srv RSS MiB (start→peak)", "srv fds peak", "client CPU s"]  # fmt: skip
    body = []
    for r in rows:
        body.append([
            r["server"], r["strategy"] + (f" (jitter {r['jitter_s']:g} s)" if r["jitter_s"] else ""),
            r["hosts"], r["ok"], r["errors"], f"{r['p50_s']:.2f}", f"{r['p99_s']:.2f}",
            f"{r['makespan_s']:.2f}", f"{r['updates_per_s']:.1f}", f"{r['requests_per_host']:.1f}",
            f"{r['requests_per_s']:.0f}", f"{r['bytes_per_host'] / MB:.2f}",
            f"{r['bytes_per_s'] / MB:.0f}", f"{r['server_cpu_s']:.1f}",
            f"{100 * r['server_cpu_util']:.0f}", f"{r['server_cpu_ms_per_update']:.1f}",
            f"{r['server_rss_start'] / 2**20:.0f}→{r['server_peak_rss'] / 2**20:.0f}",
            r["server_peak_fds"], f"{r['client_cpu_s']:.1f}",
        ])  # fmt: skip
    return markdown_table(headers, body)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({r["server"] for r in rows})
    strategies = sorted({r["strategy"] for r in rows})
    fig, axes = plt.subplots(1, len(servers), figsize=(4.2 * len(servers), 4), sharey=True)
    if len(servers) == 1:
        axes = [axes]
    for ax, srv in zip(axes, servers, strict=True):
        for strat in strategies:
            rs = sorted((r for r in rows if r["server"] == srv and r["strategy"] == strat
                         and r["jitter_s"] == 0), key=lambda r: r["hosts"])  # fmt: skip
            if rs:
                color = {"chunks": "tab:blue", "layers": "tab:green"}.get(strat, "tab:gray")
                ax.plot([r["hosts"] for r in rs], [r["p99_s"] for r in rs], marker="o",
                        color=color, label=f"{strat} p99")  # fmt: skip
                ax.plot([r["hosts"] for r in rs], [r["p50_s"] for r in rs], marker=".",
                        color=color, alpha=0.5, linestyle=":", label=f"{strat} p50")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(srv)
        ax.set_xlabel("hosts updating at once (N)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time to finish one update (s)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------


@contextlib.contextmanager
def servers_running(
    names: Sequence[str], work: Path, images: dict[str, Any]
) -> Iterator[dict[str, Server]]:
    started: list[Server] = []
    out: dict[str, Server] = {}
    try:
        if "chunkah" in names:
            s = start_chunkah(work)
            started.append(s)
            out["chunkah"] = s
        need_registry = any(n in names for n in ("registry", "cdn", "cdn-1range"))
        if need_registry:
            reg, _ = start_docker_registry(work)
            started.append(reg)
            out["registry"] = reg
        for s in list(out.values()):
            for tag in ("v1", "v2"):
                push(images[tag]["layout"], tag, s.host)
        for name, mr in (("cdn", 16), ("cdn-1range", 1)):
            if name in names:
                s = start_cdn(work / name, name, out["registry"], mr)
                started.insert(0, s)
                out[name] = s
        yield {n: out[n] for n in names}
    finally:
        for s in started:
            s.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--hosts", help="comma-separated N values")
    ap.add_argument("--servers", help="chunkah,registry,cdn,cdn-1range")
    ap.add_argument("--strategies", help="layers,chunks,full")
    ap.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="spread each host's start uniformly over this many seconds")  # fmt: skip
    ap.add_argument("--jitter-rows",
                    help="extra rows SERVER/STRATEGY/N/JITTER,... (e.g. chunkah/chunks/1000/10)")  # fmt: skip
    ap.add_argument("--verify", action="store_true",
                    help="hosts decompress and sha256-check every chunk (fetch_plan); off by "
                    "default: the requests are the same, the check costs the simulator's CPU")  # fmt: skip
    ap.add_argument("--series", choices=["synthetic", "tiny", "app"],
                    help="image series (default: the profile's)")  # fmt: skip
    ap.add_argument("--step", type=int, default=1,
                    help="update version STEP -> STEP+1 of the series (default 1)")  # fmt: skip
    ap.add_argument("--ladder", action="store_true",
                    help="no waves: the fallback ladder's cost per front for the series' "
                    "plan (benchmarks/results/fleet-ladder-SERIES.{json,md})")  # fmt: skip
    ap.add_argument("--name", help="results file stem (default: fleet or fleet-quick)")
    ap.add_argument("--work", help="work directory (default: a temporary one)")
    ap.add_argument("--replot", action="store_true", help="redraw NAME.png from NAME.json")
    args = ap.parse_args(argv)
    if args.replot:
        name = args.name or ("fleet" if args.profile == "full" else "fleet-quick")
        doc = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        plot(doc["rows"], RESULTS_DIR / f"{name}.png", doc["header"].split("; 1-min")[0])
        return 0
    if args.worker:
        worker(args.worker)
        return 0
    prof = PROFILES[args.profile]
    hosts = [int(x) for x in args.hosts.split(",")] if args.hosts else prof["hosts"]
    servers = args.servers.split(",") if args.servers else prof["servers"]
    strategies = args.strategies.split(",") if args.strategies else prof["strategies"]
    name = args.name or ("fleet" if args.profile == "full" else "fleet-quick")
    fd_limit = raise_fd_limit()
    t_start = time.monotonic()
    load0 = os.getloadavg()
    work_ctx = (
        contextlib.nullcontext(args.work)
        if args.work
        else tempfile.TemporaryDirectory(prefix="chunkah-fleet-")
    )
    rows: list[dict[str, Any]] = []
    with work_ctx as wd:
        work = Path(wd)
        work.mkdir(parents=True, exist_ok=True)
        series = args.series or prof["series"]
        level: int | None = None
        if series == "synthetic":
            v1_tree, v2_tree = synthetic_trees(work)
            level = 3
        else:
            v1_tree, v2_tree = series_trees(series, args.step)
        images = build_images(v1_tree, v2_tree, work, level)
        print(f"# images: {json.dumps(images)}", file=sys.stderr, flush=True)
        if args.ladder:
            costs = ladder_costs(Path(images["v1"]["layout"]), Path(images["v2"]["layout"]))
            md = ladder_table(f"{series} step {args.step}:", costs)
            print(md)
            stem = f"fleet-ladder-{series}" + (f"-step{args.step}" if args.step != 1 else "")
            write_json(stem, {"machine": machine_info(), "step": args.step, **costs})
            (RESULTS_DIR / f"{stem}.md").write_text(md + "\n")
            return 0
        rows_text = (
            args.jitter_rows if args.jitter_rows is not None else prof.get("jitter_rows", "")
        )
        extra = [tuple(x.split("/")) for x in rows_text.split(",") if x]
        pool = Workers(args.workers, images["v1"]["layout"])
        try:
            with servers_running(servers, work, images) as running:
                for srv_name in servers:
                    srv = running[srv_name]
                    for strategy in strategies:
                        # One host first: fills caches (the CDN's, the page cache); not counted.
                        run_wave(srv, strategy, 1, pool, 0.0, 0)
                        for n in hosts:
                            r = run_wave(srv, strategy, n, pool, args.jitter, n, args.verify)
                            r["note"] = srv.note
                            rows.append(r)
                            print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
                for srv_name, strategy, n_text, jit in extra:
                    r = run_wave(running[srv_name], strategy, int(n_text), pool, float(jit),
                                 int(n_text), args.verify)  # fmt: skip
                    r["note"] = running[srv_name].note
                    rows.append(r)
                    print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
        finally:
            pool.close()
    info = machine_info()
    load1 = os.getloadavg()
    header = (
        f"Fleet waves over loopback, {info['date']}, {info['cpu']} ({info['cores']} cores), "
        f"Python {info['python']}; profile {args.profile} ({series} v1 -> v2: "
        f"{images['new_layers']} of {images['v2_layers']} layers new, "
        f"{images['new_layer_bytes'] / MB:.2f} of {images['v2_bytes'] / MB:.2f} MB); "
        f"{args.workers} client processes, chunk checks {'on' if args.verify else 'off'}; "
        f"1-min load average {load0[0]:.2f} -> {load1[0]:.2f} "
        f"(shared machine); RLIMIT_NOFILE {fd_limit}; {time.monotonic() - t_start:.0f} s in all."
    )
    k = knees(rows)
    knee_lines = [
        f"- {key}: peak {v['peak_updates_per_s']:.1f} updates/s, knee at N = {v['knee_hosts']}"
        + (" (saturated at the largest N)" if v["saturated"] else "")
        for key, v in k.items()
    ]
    md = "\n".join([header, "", table(rows), "", *knee_lines, ""])
    print(md)
    write_json(name, {"machine": info, "profile": args.profile, "images": images, "header": header,
                      "rows": rows, "knees": k, "load": [load0, load1]})  # fmt: skip
    (RESULTS_DIR / f"{name}.md").write_text(md)
    plot(rows, RESULTS_DIR / f"{name}.png", header.split("; 1-min")[0])
    # Errors of other registries are results; an error of ours is a failure.
    ours = [r for r in rows if r["server"] == "chunkah" and r["errors"]]
    if ours:
        print(f"fleet: chunkah serve failed {sum(r['errors'] for r in ours)} updates: "
              f"{ours[0]['error_kinds']}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
