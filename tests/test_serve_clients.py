"""Real clients against the embedded registry: skopeo, podman, and the oras Python SDK.

The server runs in-process (``ServerThread`` from test_serve.py); the clients are the
real programs, with loopback plain HTTP.  Each test uses its own repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.tools import run, skopeo_copy, skopeo_inspect
from test_serve import ServerThread

from chunkah import oci
from chunkah.oci import LayerHistory, OciLayout

EPOCH = 1_700_000_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("serve-clients")).start()
    try:
        yield srv
    finally:
        srv.stop()


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    sent: int
    range: str


class AccessCapture(logging.Handler):
    """Collects the server's access-log records while installed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[Access] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        assert isinstance(args, tuple)
        _, method, path, status, sent, rng, *_ = args
        self.entries.append(Access(str(method), str(path), int(status), int(sent), str(rng)))  # type: ignore[call-overload]


@pytest.fixture
def access() -> Iterator[AccessCapture]:
    logger = logging.getLogger("chunkah.registry.access")
    handler = AccessCapture()
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for name in files:
            parts = Path(name).parts[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tf.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), EPOCH, 0o644
            tf.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def build_image(
    path: Path, tag: str, layers: list[dict[str, bytes]], compression: str = "gzip"
) -> oci.Descriptor:
    layout = OciLayout.create(path)
    descs, history = [], []
    for files in layers:
        desc, digests = oci.add_layer(layout, io.BytesIO(make_tar(files)), compression)
        descs.append(desc)
        history.append(LayerHistory(digests.diff_id, created_by="chunkah serve test"))
    config = oci.build_config(
        oci.config_from_inspect(
            {"Architecture": "x86_64", "Os": "linux", "Config": {"Cmd": ["/bin/true"]}}
        ),
        history,
        created=EPOCH,
    )
    return oci.write_image(layout, config, descs, tag=tag)


def random_files(seed: int, n: int, size: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"usr/lib/f{i:03d}.bin": rnd.randbytes(size) for i in range(n)}


def layout_blob(path: Path, digest: str) -> bytes:
    return (path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


# -- skopeo ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_skopeo_push_and_pull(server: ServerThread, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    build_image(src, "v1", [random_files(1, 5, 3000), {"etc/hello": b"hello\n"}])
    repo = f"skopeo/{fmt}"
    ref = f"docker://{server.host}/{repo}:v1"
    extra = ["--format", fmt] if fmt == "v2s2" else []
    skopeo_copy(f"oci:{src}:v1", ref, *extra, preserve_digests=fmt == "oci")
    raw = skopeo_inspect(ref, raw=True, parse=False)
    assert isinstance(raw, bytes)
    # What the registry stores is what skopeo pushed, byte for byte.
    stored = OciLayout.open(server.root / repo)
    (entry,) = [d for d in stored.read_index().manifests if d.ref_name == "v1"]
    assert entry.digest == sha(raw)
    assert layout_blob(server.root / repo, entry.digest) == raw
    manifest = json.loads(raw)
    expected_type = (
        "application/vnd.oci.image.manifest.v1+json"
        if fmt == "oci"
        else "application/vnd.docker.distribution.manifest.v2+json"
    )
    assert manifest["mediaType"] == expected_type
    assert entry.media_type == expected_type
    if fmt == "oci":  # --preserve-digests: the very same manifest as the source layout
        (src_entry,) = OciLayout.open(src).read_index().manifests
        assert src_entry.digest == entry.digest
    # Pull back into a new layout: same manifest, same blobs.
    dst = tmp_path / "dst"
    skopeo_copy(ref, f"oci:{dst}:back", preserve_digests=True)
    (back,) = OciLayout.open(dst).read_index().manifests
    assert back.digest == entry.digest
    assert layout_blob(dst, back.digest) == raw
    for d in [manifest["config"], *manifest["layers"]]:
        assert layout_blob(dst, d["digest"]) == layout_blob(server.root / repo, d["digest"])
    # And chunkah.oci reads the repository directory as an image.
    img = oci.resolve_image(oci.parse_reference(f"oci:{server.root / repo}:v1"))
    for i in range(len(img.layers)):
        with img.open_layer(i) as f:
            while f.read(1 << 20):
                pass


def test_skopeo_copy_between_repositories_mounts(
    server: ServerThread, tmp_path: Path, access: AccessCapture
) -> None:
    src = tmp_path / "src"
    build_image(src, "v1", [random_files(2, 3, 50_000)])
    skopeo_copy(f"oci:{src}:v1", f"docker://{server.host}/mount/a:v1", preserve_digests=True)
    access.entries.clear()
    skopeo_copy(
        f"docker://{server.host}/mount/a:v1",
        f"docker://{server.host}/mount/b:v1",
        preserve_digests=True,
    )
    # skopeo mounts the layer it knows is in mount/a (it always re-sends configs).
    layer = json.loads(layout_blob(src, OciLayout.open(src).read_index().manifests[0].digest))[
        "layers"
    ][0]["digest"]
    mounts = [e for e in access.entries if e.method == "POST" and "mount=" in e.path]
    assert [(e.status, layer.replace(":", "%3A") in e.path) for e in mounts] == [(201, True)]
    assert (server.root / "mount/b/blobs/sha256" / layer.split(":")[1]).is_file()
    assert skopeo_inspect(
        f"docker://{server.host}/mount/b:v1", raw=True, parse=False
    ) == skopeo_inspect(f"docker://{server.host}/mount/a:v1", raw=True, parse=False)


def test_skopeo_multi_arch_index(server: ServerThread, tmp_path: Path) -> None:
    """An image index: children go up by digest (untagged in index.json), the index by tag."""
    src = tmp_path / "src"
    layout = OciLayout.create(src)
    children = []
    for arch, seed in (("amd64", 10), ("arm64", 11)):
        desc, digests = oci.add_layer(
            layout, io.BytesIO(make_tar(random_files(seed, 2, 4000))), "gzip"
        )
        config = oci.build_config(None, [LayerHistory(digests.diff_id)], arch=arch, created=EPOCH)
        m = oci.write_image(layout, config, [desc], tag=f"only-{arch}")
        children.append(
            {
                "mediaType": m.media_type,
                "digest": m.digest,
                "size": m.size,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = oci.canonical_json(
        {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": children}
    )
    layout.add_manifest(index, "multi", media_type=oci.OCI_INDEX)
    ref = f"docker://{server.host}/multi/arch:v1"
    skopeo_copy(f"oci:{src}:multi", ref, "--all", preserve_digests=True)
    assert skopeo_inspect(ref, raw=True, parse=False) == index
    entries = OciLayout.open(server.root / "multi/arch").read_index().manifests
    assert {(d.digest, d.ref_name) for d in entries} == {
        (sha(index), "v1"),
        *((c["digest"], None) for c in children),
    }
    dst = tmp_path / "dst"
    skopeo_copy(ref, f"oci:{dst}:back", "--all", preserve_digests=True)
    (back,) = OciLayout.open(dst).read_index().manifests
    assert back.digest == sha(index)
    # A single-platform pull through the index.
    out = skopeo_inspect(ref)
    assert isinstance(out, dict)
    assert out["Architecture"] in ("amd64", "arm64")


# -- podman --------------------------------------------------------------------------------


def podman(tmp_path: Path, driver: str, *args: str, partial: bool = False) -> str:
    conf = tmp_path / f"storage-{driver}.conf"
    if not conf.exists():
        text = (
            "[storage]\n"
            f'driver = "{driver}"\n'
            f'runroot = "{tmp_path / f"run-{driver}"}"\n'
            f'graphroot = "{tmp_path / f"root-{driver}"}"\n'
        )
        if partial:
            text += (
                "[storage.options]\n"
                'pull_options = {enable_partial_images = "true", use_hard_links = "false", '
                'ostree_repos = ""}\n'
            )
        conf.write_text(text)
    proc = run(
        ["podman", "--events-backend=none", *args],
        env={"CONTAINERS_STORAGE_CONF": str(conf)},
        timeout=240,
    )
    return proc.stdout.decode()


def test_podman_pull(server: ServerThread, tmp_path: Path) -> None:
    src = tmp_path / "src"
    desc = build_image(
        src, "v1", [random_files(3, 4, 10_000), {"etc/motd": b"served by chunkah\n"}]
    )
    skopeo_copy(f"oci:{src}:v1", f"docker://{server.host}/podman/app:v1", preserve_digests=True)
    ref = f"{server.host}/podman/app:v1"
    podman(tmp_path, "vfs", "pull", "--tls-verify=false", ref)
    out = podman(tmp_path, "vfs", "image", "inspect", ref)
    (info,) = json.loads(out)
    assert info["Digest"] == desc.digest
    img = oci.resolve_image(oci.parse_reference(f"oci:{src}:v1"))
    assert info["RootFS"]["Layers"] == list(img.config.diff_ids)


def test_podman_partial_pull_uses_multirange(
    server: ServerThread, tmp_path: Path, access: AccessCapture
) -> None:
    """zstd:chunked v1 then v2 with the overlay driver: v2 fetches only what changed.

    podman matches the parts of a multipart/byteranges answer to its ranges one by one,
    so this is the check that our multipart answers are what real clients expect.
    """
    files = random_files(4, 40, 20_000)
    build_image(tmp_path / "v1", "v1", [files], compression="none")
    changed = dict(files)
    changed["usr/lib/f003.bin"] = b"changed" * 5000
    changed["usr/lib/new.bin"] = random.Random(5).randbytes(30_000)
    build_image(tmp_path / "v2", "v2", [changed], compression="none")
    for v in ("v1", "v2"):
        skopeo_copy(
            f"oci:{tmp_path / v}:{v}",
            f"docker://{server.host}/podman/partial:{v}",
            "--dest-compress-format",
            "zstd:chunked",
        )
    podman(
        tmp_path,
        "overlay",
        "pull",
        "--tls-verify=false",
        f"{server.host}/podman/partial:v1",
        partial=True,
    )
    access.entries.clear()
    podman(
        tmp_path,
        "overlay",
        "pull",
        "--tls-verify=false",
        f"{server.host}/podman/partial:v2",
        partial=True,
    )
    manifest = json.loads(
        layout_blob(
            server.root / "podman/partial",
            OciLayout.open(server.root / "podman/partial").read_index().manifests[-1].digest,
        )
    )
    layer = manifest["layers"][0]
    gets = [e for e in access.entries if e.method == "GET" and layer["digest"] in e.path]
    assert gets, access.entries
    assert all(e.status == 206 for e in gets), gets  # never the whole layer
    fetched = sum(e.sent for e in gets)
    assert fetched < layer["size"] // 4, (fetched, layer["size"])
    out = podman(tmp_path, "overlay", "image", "inspect", f"{server.host}/podman/partial:v2")
    assert json.loads(out)[0]["RootFS"]["Layers"]


# -- oras ----------------------------------------------------------------------------------


def test_oras_push_pull_and_referrers(server: ServerThread, tmp_path: Path) -> None:
    oras_client = pytest.importorskip("oras.client")
    import oras.oci

    work = tmp_path / "in"
    work.mkdir()
    (work / "a.txt").write_text("hello artifact\n")
    (work / "b.bin").write_bytes(os.urandom(200_000))
    (work / "sig").write_bytes(b"signature bytes")
    client = oras_client.OrasClient(hostname=server.host, insecure=True)
    target = f"{server.host}/oras/files:v1"
    old_cwd = os.getcwd()
    os.chdir(work)  # oras-py wants paths relative to the working directory
    try:
        r = client.push(
            target=target, files=["a.txt:text/plain", "b.bin"], manifest_annotations={"k": "v"}
        )
        assert r.status_code == 201
        digest = r.headers["Docker-Content-Digest"]
        manifest = client.get_manifest(target)
        size = len(layout_blob(server.root / "oras/files", digest))
        subject = oras.oci.Subject(mediaType=manifest["mediaType"], digest=digest, size=size)
        r = client.push(
            target=f"{server.host}/oras/files:sig",
            files=["sig"],
            manifest_config="/dev/null:application/vnd.example.signature",
            subject=subject,
        )
        assert r.status_code == 201
        assert r.headers["OCI-Subject"] == digest
        sig_digest = r.headers["Docker-Content-Digest"]
        # Chunked uploads too.
        r = client.push(
            target=f"{server.host}/oras/files:chunked",
            files=["b.bin"],
            do_chunked=True,
            chunk_size=65536,
        )
        assert r.status_code == 201
    finally:
        os.chdir(old_cwd)
    out = tmp_path / "out"
    pulled = client.pull(target=target, outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == ["a.txt", "b.bin"]
    assert (out / "a.txt").read_bytes() == (work / "a.txt").read_bytes()
    assert (out / "b.bin").read_bytes() == (work / "b.bin").read_bytes()
    # Discover: oras-py has no `discover`; ask the referrers API through its session.
    url = f"http://{server.host}/v2/oras/files/referrers/{digest}"
    resp = client.do_request(url, "GET")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    refs = resp.json()["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in refs] == [
        (sig_digest, "application/vnd.example.signature")
    ]
    resp = client.do_request(url + "?artifactType=application/other", "GET")
    assert resp.json()["manifests"] == []
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
