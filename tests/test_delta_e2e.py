"""Per-file deltas end to end: `chunkah build`, skopeo push, `chunkah delta` into Debian's
docker-registry (no referrers API: the sha256-HEX tag fallback), `chunkah update`.

Every deployed tree is judged by diff_trees against the source; bytes come from the
registry's access log.  Bad deltas (corrupt data, a missing blob, an index that lies)
must fall back to chunks and still land the exact tree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.clamps import expected_clamps
from support.tools import skopeo_copy
from support.treediff import assert_trees_equal

EPOCH = 1_700_000_000
SITE = "usr/lib/python3/dist-packages/numpy.libs"


def chunkah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"chunkah {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _binary(rng: random.Random, size: int) -> bytes:
    """Incompressible, like machine code after zstd: chunks cost their full size."""
    return rng.randbytes(size)


def _patched(rng: random.Random, data: bytes, edits: int) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) - 64)
        out[at : at + 8] = rng.randbytes(8)
    return bytes(out) + b"signature:" + rng.randbytes(32)


def _words(rng: random.Random, n: int) -> bytes:
    vocab = [b"ext4", b"module", b"firmware", b"kernel", b"udev", b"systemd", b"crypto"]
    return b" ".join(rng.choice(vocab) for _ in range(n))


def make_versions(root: Path) -> tuple[Path, Path]:
    """v1 and v2 of a small OS: a kernel ABI bump (module directory renamed), a shared
    object whose soname version moves, a vendored library under a new hash, a binary
    changed in place, a new file, and files that stay."""
    rng = random.Random(10)
    base = {
        "usr/lib/modules/{kv}/kernel/fs/ext4/ext4.ko": _binary(rng, 180_000),
        "usr/lib/modules/{kv}/kernel/net/ipv6.ko": _binary(rng, 150_000),
        "usr/lib/modules/{kv}/modules.dep": b"kernel/fs/ext4/ext4.ko:\n" * 300,
        "usr/lib/x86_64-linux-gnu/libfoo.so.{so}": _binary(rng, 220_000),
        SITE + "/libopenblas-{h}.so": _binary(rng, 260_000),
        "usr/bin/tool": _binary(rng, 120_000),
        "etc/os-release": b"NAME=test\n",
        "usr/share/doc/readme": b"unchanged\n" * 500,
    }
    names = {
        1: {"kv": "6.1.0-50-amd64", "so": "1.2.13", "h": "fdde5778"},
        2: {"kv": "6.1.0-56-amd64", "so": "1.3", "h": "32a4b2a6"},
    }
    out = []
    for v in (1, 2):
        src = root / f"v{v}"
        for tmpl, content in base.items():
            path = src / tmpl.format(**names[v])
            path.parent.mkdir(parents=True, exist_ok=True)
            changed = v == 2 and not tmpl.startswith(("etc/", "usr/share/"))
            path.write_bytes(_patched(random.Random(tmpl), content, 6) if changed else content)
        # An initrd: gzip -n of content that changes a little, so the compressed bytes
        # change from the first edit on (the gzip-inner encoding's case).
        initrd = _words(random.Random(11), 60_000)
        if v == 2:
            initrd = initrd[:100_000] + b"a new module\n" + initrd[100_000:]
        boot = src / "boot" / f"initrd.img-{names[v]['kv']}"
        boot.parent.mkdir(parents=True, exist_ok=True)
        boot.write_bytes(
            subprocess.run(
                ["gzip", "-n", "-6", "-c"], input=initrd, capture_output=True, check=True
            ).stdout
        )
        if v == 2:
            (src / "usr/bin/newtool").write_bytes(_binary(rng, 40_000))
        out.append(src)
    return out[0], out[1]


@pytest.fixture(scope="module")
def pushed(docker_registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("delta")
    v1, v2 = make_versions(tmp / "src")
    refs = {}
    for v, src in ((1, v1), (2, v2)):
        chunkah("build", str(src), "-o", f"oci:{tmp}/img:v{v}", "-q")
        refs[v] = docker_registry.ref("delta", f"v{v}")
        skopeo_copy(f"oci:{tmp}/img:v{v}", refs[v], preserve_digests=True)
    made = json.loads(
        chunkah("delta", refs[1], refs[2], "-o", refs[2], "--plain-http", "--json").stdout
    )
    return {"v1": v1, "v2": v2, "refs": refs, "made": made, "tmp": tmp}


def update(ref: str, sysroot: Path, *extra: str) -> dict:
    out = chunkah("update", ref, "--sysroot", str(sysroot), "--plain-http", "--json", *extra)
    return json.loads(out.stdout)


def to_v2(pushed, docker_registry, sysroot: Path, *extra: str) -> tuple[dict, int]:
    """v1 (setup), then the measured update to v2: its report and wire bytes."""
    update(pushed["refs"][1], sysroot)
    mark = docker_registry.access_offset()
    report = update(pushed["refs"][2], sysroot, *extra)
    wire = sum(e.bytes for e in docker_registry.access_entries(since=mark))
    assert_trees_equal(
        pushed["v2"],
        os.path.realpath(sysroot / "current"),
        mtime_clamp=expected_clamps(pushed["v2"], EPOCH),
    )
    return report, wire


def test_delta_made_and_published_by_tag_fallback(pushed):
    made = pushed["made"]
    assert made["discoverable_by"] == "tag"  # distribution 2.8: no referrers API
    assert made["paired_by"]["renamed"] >= 4  # modules, the .so, the vendored library
    assert made["kept"] >= 6
    assert made["delta_bytes"] < made["chunk_bytes_replaced"] / 20
    assert made["encodings"].get("gzip-inner") == 1  # the initrd, by its content


def test_update_uses_deltas_and_fetches_less(pushed, docker_registry, tmp_path):
    with_deltas, wire = to_v2(pushed, docker_registry, tmp_path / "a")
    plan = with_deltas["plan"]
    assert plan["files"]["delta"] >= 6
    assert plan["deltas"]["applied"] == plan["files"]["delta"] and plan["deltas"]["failed"] == 0
    paths = {row["path"]: row["base"] for row in plan["delta_files"]}
    assert paths["usr/lib/modules/6.1.0-56-amd64/kernel/fs/ext4/ext4.ko"] == (
        "usr/lib/modules/6.1.0-50-amd64/kernel/fs/ext4/ext4.ko"
    )
    # Rebuilt by regzipping on the host, then checked against the TOC's sha256.
    assert paths["boot/initrd.img-6.1.0-56-amd64"] == "boot/initrd.img-6.1.0-50-amd64"
    chunks_only, wire_chunks = to_v2(pushed, docker_registry, tmp_path / "b", "--no-deltas")
    assert chunks_only["plan"]["files"].get("delta", 0) == 0
    assert wire < wire_chunks / 3, (wire, wire_chunks)
    # `chunkah plan` on a host at v1 names the files that come by delta.
    sysroot = tmp_path / "c"
    update(pushed["refs"][1], sysroot)
    text = chunkah("plan", pushed["refs"][2], "--sysroot", str(sysroot), "--plain-http").stdout
    assert "by delta" in text and "ext4.ko" in text and "(from usr/lib/modules/6.1.0-50" in text


def _blob_file(registry, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def _manifest(registry, reference: str, media_type: str) -> dict:
    import urllib.request

    req = urllib.request.Request(
        f"{registry.url}/v2/delta/manifests/{reference}", headers={"Accept": media_type}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _artifact(pushed, docker_registry) -> dict:
    tag = "sha256-" + pushed["made"]["to"].split(":", 1)[1]
    listing = _manifest(docker_registry, tag, "application/vnd.oci.image.index.v1+json")
    (desc,) = listing["manifests"]
    return _manifest(docker_registry, desc["digest"], "application/vnd.oci.image.manifest.v1+json")


def _assert_fell_back(report: dict) -> None:
    plan = report["plan"]
    assert plan["files"]["delta"] >= 1
    assert plan["deltas"]["failed"] >= 1 and plan["deltas"]["failures"]
    assert plan["fallback_fetch_bytes"] > 0


def test_corrupt_delta_data_falls_back_to_chunks(pushed, docker_registry, tmp_path):
    data = _blob_file(docker_registry, _artifact(pushed, docker_registry)["layers"][1]["digest"])
    saved = data.read_bytes()
    try:
        data.write_bytes(bytes(b ^ 0x55 for b in saved))
        report, _ = to_v2(pushed, docker_registry, tmp_path / "s")
        _assert_fell_back(report)
        assert report["plan"]["deltas"]["applied"] == 0
    finally:
        data.write_bytes(saved)


def test_missing_delta_data_falls_back_to_chunks(pushed, docker_registry, tmp_path):
    data = _blob_file(docker_registry, _artifact(pushed, docker_registry)["layers"][1]["digest"])
    moved = data.with_name("data.away")
    os.rename(data, moved)
    try:
        report, _ = to_v2(pushed, docker_registry, tmp_path / "s")
        _assert_fell_back(report)
    finally:
        os.rename(moved, data)


def test_lying_delta_index_falls_back_to_chunks(pushed, docker_registry, tmp_path):
    """An artifact whose index is self-consistent but promises the wrong files: every
    delta is swapped with its neighbour's (digests recomputed)."""
    from chunkah import oci
    from chunkah.delta.artifact import find_deltas, make_artifact, push_artifact
    from chunkah.registry.client import RegistryClient
    from chunkah.registry.reference import parse_registry_reference

    ref2 = parse_registry_reference(pushed["refs"][2])
    made = pushed["made"]

    async def go() -> None:
        async with RegistryClient(plain_http=True) as client:
            found = await find_deltas(client, ref2, made["to"], made["from"])
            assert found is not None
            blob = await client.get_blob_bytes(ref2, found.data, max_size=1 << 26)
            offers = found.offers
            pieces = [blob[o.offset : o.offset + o.size] for o in offers]
            pieces = pieces[1:] + pieces[:1]  # each index row now describes another file's delta
            lying, data = [], b""
            for o, piece in zip(offers, pieces, strict=True):
                lying.append(o._replace(offset=len(data), size=len(piece),
                                        delta_sha256=hashlib.sha256(piece).digest()))  # fmt: skip
                data += piece
            image = await client.resolve(ref2)
            subject = oci.Descriptor(image.descriptor.media_type, made["to"], image.descriptor.size)
            await push_artifact(client, ref2, make_artifact(lying, data, subject=subject,
                                                            from_digest=made["from"]))  # fmt: skip

    asyncio.run(go())
    try:
        report, _ = to_v2(pushed, docker_registry, tmp_path / "s")
        _assert_fell_back(report)
        assert report["plan"]["deltas"]["applied"] == 0
    finally:  # the honest artifact back for the other tests
        chunkah(
            "delta",
            pushed["refs"][1],
            pushed["refs"][2],
            "-o",
            pushed["refs"][2],
            "--plain-http",
            "-q",
        )


def test_delta_into_a_served_layout_uses_the_referrers_api(pushed, tmp_path):
    """`chunkah delta -o oci:DIR` into a `chunkah serve` directory: listed by the API."""
    from support.registry import free_port

    serve_dir = tmp_path / "serve"
    layout = serve_dir / "delta"
    shutil.copytree(pushed["tmp"] / "img", layout)
    made = json.loads(
        chunkah(
            "delta", f"oci:{layout}:v1", f"oci:{layout}:v2", "-o", f"oci:{layout}", "--json"
        ).stdout
    )
    assert made["discoverable_by"] == "layout"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkah", "serve", str(serve_dir), "--listen", f"127.0.0.1:{port}", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import time
        import urllib.request

        url = f"http://127.0.0.1:{port}/v2/delta/referrers/{made['to']}"
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    listing = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("chunkah serve did not come up")
        assert [m["digest"] for m in listing["manifests"]] == [made["artifact"]]
        ref1, ref2 = (f"docker://127.0.0.1:{port}/delta:v{v}" for v in (1, 2))
        sysroot = tmp_path / "sys"
        update(ref1, sysroot)
        report = update(ref2, sysroot)
        assert report["plan"]["deltas"]["applied"] >= 6
        assert_trees_equal(
            pushed["v2"], os.path.realpath(sysroot / "current"),
            mtime_clamp=expected_clamps(pushed["v2"], EPOCH),
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
