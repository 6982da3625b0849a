"""chunkah.oci without external tools: model, layouts, archives, configs, resolution."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from chunkah import oci
from chunkah.oci import (
    BadReferenceError,
    ConfigError,
    Descriptor,
    DigestMismatchError,
    ImageConfig,
    ImageNotFoundError,
    Index,
    InvalidImageError,
    LayerHistory,
    Manifest,
    OciLayout,
    Platform,
    PlatformNotFoundError,
)

EPOCH = 1_700_000_000
FILES = {"etc/hostname": b"chunkah\n", "usr/bin/hello": b"#!/bin/sh\necho hi\n" * 50}


def make_tar(files: dict[str, bytes]) -> bytes:
    """A small deterministic layer tar (directories first, sorted, mtime 0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(files[name]), 0
            info.mode = 0o755 if "/bin/" in name else 0o644
            tf.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def build(
    path: Path,
    tag: str | None = "latest",
    *,
    compression: str = "gzip",
    files: dict[str, bytes] = FILES,
    threads: int = 1,
    arch: str = "amd64",
    labels: list[str] = (),  # type: ignore[assignment]
    annotations: dict[str, str] | None = None,
    base: ImageConfig | None = None,
) -> Descriptor:
    layout = OciLayout.create(path)
    desc, digests = oci.add_layer(layout, io.BytesIO(make_tar(files)), compression, threads=threads)
    config = oci.build_config(
        base,
        [LayerHistory(digests.diff_id, created_by="test")],
        labels=oci.parse_label_edits(labels),
        arch=arch,
        created=EPOCH,
    )
    return oci.write_image(layout, config, [desc], tag=tag, annotations=annotations)


def layer_files(image: oci.ResolvedImage, i: int = 0) -> dict[str, bytes]:
    out = {}
    with image.open_layer(i) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        for member in tf:
            if member.isfile():
                f = tf.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
    return out


# -- model ---------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert oci.canonical_json({"b": 1, "a": ["é", {"d": 2, "c": 3}]}) == (
        '{"a":["é",{"c":3,"d":2}],"b":1}'.encode()
    )


def test_manifest_round_trip_keeps_unknown_fields() -> None:
    cfg = {"mediaType": oci.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 7}
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": cfg,
        "layers": [dict(cfg, mediaType=oci.OCI_LAYER_ZSTD, annotations={"k": "v"}, x=1)],
        "subject": {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 3},
        "annotations": {"org.example": "yes"},
    }
    m = Manifest.from_json(json.dumps(doc).encode())
    assert m.layers[0].annotations == {"k": "v"}
    assert json.loads(m.to_json()) == doc
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "SHA256:" + "a" * 64, "sha256:" + "A" * 64, "md5:" + "a" * 32, "../../etc"],
)
def test_bad_digests_are_rejected(digest: str) -> None:
    with pytest.raises(InvalidImageError, match="invalid digest"):
        Descriptor(media_type=oci.OCI_CONFIG, digest=digest, size=1)


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion":1}',
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}',
        b'{"schemaVersion":2,"config":{},"layers":[]}',
    ],
)
def test_malformed_manifests_raise_invalid_image(doc: bytes) -> None:
    with pytest.raises(InvalidImageError):
        Manifest.from_json(doc)


def test_index_and_config_round_trip() -> None:
    idx = Index(
        manifests=(
            Descriptor(
                oci.OCI_MANIFEST,
                "sha256:" + "c" * 64,
                10,
                platform=Platform("arm", variant="v7"),
                annotations={oci.ANNOTATION_REF_NAME: "v1"},
            ),
        )
    )
    assert Index.from_json(idx.to_json()) == idx
    assert idx.manifests[0].ref_name == "v1"
    cfg = ImageConfig(
        architecture="amd64",
        config={"Env": ["A=1"], "Labels": {"x": "y"}},
        diff_ids=("sha256:" + "d" * 64,),
        extra={"os.version": "1"},
    )
    assert ImageConfig.from_json(cfg.to_json()) == cfg
    assert cfg.labels == {"x": "y"}


# -- references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "path", "tag"),
    [
        ("oci:/tmp/img", "oci", "/tmp/img", None),
        ("oci:/tmp/img:v1", "oci", "/tmp/img", "v1"),
        ("oci:rel/dir:example.com/app:1.0", "oci", "rel/dir", "example.com/app:1.0"),
        ("oci-archive:/x/y.tar:latest", "oci-archive", "/x/y.tar", "latest"),
        ("oci-archive:y.tar", "oci-archive", "y.tar", None),
        ("/srv/rootfs", "rootfs", "/srv/rootfs", None),
        ("rootfs", "rootfs", "rootfs", None),
        ("./odd:name", "rootfs", "odd:name", None),
    ],
)
def test_parse_reference(text: str, transport: str, path: str, tag: str | None) -> None:
    ref = oci.parse_reference(text)
    assert (ref.transport, ref.path, ref.tag) == (transport, Path(path), tag)


def test_parse_docker_reference_is_passed_through() -> None:
    ref = oci.parse_reference("docker://127.0.0.1:5000/x/y:tag")
    assert ref.transport == "docker" and ref.remote == "127.0.0.1:5000/x/y:tag"
    assert str(ref) == "docker://127.0.0.1:5000/x/y:tag"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("oci:", "missing path"),
        ("oci:dir:", "empty tag"),
        ("oci:dir:bad tag", "invalid tag"),
        ("oci:dir:-lead", "invalid tag"),
        ("docker-archive:x.tar", "unsupported transport"),
        ("containers-storage:img", "unsupported transport"),
        ("docker:foo", "docker://"),
        ("docker://", "without a repository"),
    ],
)
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(BadReferenceError, match=message):
        oci.parse_reference(text)


def test_rootfs_reference_is_not_an_image() -> None:
    with pytest.raises(BadReferenceError, match="rootfs"):
        oci.inspect_image("/srv/rootfs")


# -- layouts, tags, determinism ---------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layout_round_trip(tmp_path: Path, compression: str) -> None:
    desc = build(tmp_path / "img", compression=compression, labels=["a=1"])
    layout = OciLayout.open(tmp_path / "img")
    assert (tmp_path / "img" / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    image = oci.resolve_image(f"oci:{tmp_path / 'img'}:latest")
    assert image.digest == desc.digest
    assert hashlib.sha256(image.manifest_bytes).hexdigest() == desc.digest.split(":")[1]
    assert image.layers[0].media_type == oci.layer_media_type(compression)
    assert image.config.labels == {"a": "1"}
    assert image.config.created == "2023-11-14T22:13:20Z"
    assert layer_files(image) == FILES
    assert layout.tags() == ["latest"]
    # No temporary files left behind.
    assert not [p for p in (tmp_path / "img").rglob(".tmp*")]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_same_inputs_same_manifest_digest(tmp_path: Path, compression: str) -> None:
    a = build(tmp_path / "a", compression=compression, threads=1)
    b = build(tmp_path / "b", compression=compression, threads=2)
    assert a.digest == b.digest
    c = build(tmp_path / "c", compression=compression, labels=["x=y"])
    assert c.digest != a.digest


def test_tags_add_replace_and_resolve(tmp_path: Path) -> None:
    d1 = build(tmp_path / "l", "v1")
    d2 = build(tmp_path / "l", "v2", files={"a": b"other"})
    layout = OciLayout.open(tmp_path / "l")
    assert layout.tags() == ["v1", "v2"]
    assert oci.select_manifest(layout, "v1")[0].digest == d1.digest
    # Re-tagging v1 replaces the entry instead of adding a second one.
    d3 = build(tmp_path / "l", "v1", files={"b": b"third"})
    index = layout.read_index()
    assert [d.ref_name for d in index.manifests] == ["v2", "v1"]
    assert oci.select_manifest(layout, "v1")[0].digest == d3.digest
    assert oci.select_manifest(layout, "v2")[0].digest == d2.digest
    with pytest.raises(ImageNotFoundError, match=r"no image tagged 'nope' \(tags: v1, v2\)"):
        oci.resolve_image(f"oci:{tmp_path / 'l'}:nope")
    with pytest.raises(ImageNotFoundError, match="add :TAG"):
        oci.resolve_image(f"oci:{tmp_path / 'l'}")
    assert layout.remove_tag("v2") and not layout.remove_tag("v2")
    # A single remaining image resolves without a tag, as in skopeo.
    assert oci.resolve_image(f"oci:{tmp_path / 'l'}").digest == d3.digest


def test_untagged_image(tmp_path: Path) -> None:
    d = build(tmp_path / "u", None)
    assert oci.resolve_image(f"oci:{tmp_path / 'u'}").digest == d.digest
    assert OciLayout.open(tmp_path / "u").tags() == []


def test_open_and_create_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError):
        OciLayout.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file").write_text("x")
    with pytest.raises(InvalidImageError, match="no 'oci-layout'"):
        OciLayout.open(tmp_path / "plain")
    with pytest.raises(oci.OciError, match="refusing"):
        OciLayout.create(tmp_path / "plain")
    with pytest.raises(ImageNotFoundError, match="holds no image"):
        oci.resolve_image(f"oci:{OciLayout.create(tmp_path / 'empty').path}")


# -- verification ----------------------------------------------------------------


def test_corrupt_layer_blob_is_rejected(tmp_path: Path) -> None:
    build(tmp_path / "img", compression="none")
    image = oci.resolve_image(f"oci:{tmp_path / 'img'}:latest")
    blob = OciLayout.open(tmp_path / "img").blob_path(image.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[600] ^= 1  # inside the first file's content: still a valid tar
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match="corrupt or was tampered"):
        layer_files(image)
    with pytest.raises(DigestMismatchError), image.open_layer_blob(0) as f:
        f.read()


def test_corrupt_manifest_or_config_is_rejected(tmp_path: Path) -> None:
    desc = build(tmp_path / "img")
    layout = OciLayout.open(tmp_path / "img")
    cfg_digest = Manifest.from_json(layout.blob_path(desc.digest).read_bytes()).config.digest
    path = layout.blob_path(cfg_digest)
    path.write_bytes(path.read_bytes().replace(b"amd64", b"arm64"))
    with pytest.raises(DigestMismatchError):
        oci.resolve_image(f"oci:{tmp_path / 'img'}:latest")


def test_blob_longer_than_its_descriptor_is_rejected(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    digest, size = layout.write_blob(b"hello")
    with layout.blob_path(digest).open("ab") as f:
        f.write(b"more")
    with (
        pytest.raises(DigestMismatchError, match="more than the 5 bytes"),
        layout.open_blob(Descriptor(oci.OCI_CONFIG, digest, size)) as r,
    ):
        r.read()


def test_blob_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    desc = build(tmp_path / "img", compression="none")
    image = oci.resolve_image(f"oci:{tmp_path / 'img'}:latest")
    blob = OciLayout.open(tmp_path / "img").blob_path(image.layers[0].digest)
    blob.unlink()
    blob.symlink_to("/dev/zero")
    with pytest.raises(InvalidImageError, match="not a regular file"):
        image.open_layer(0)
    assert desc.digest == image.digest


def test_wrong_diff_id_is_rejected(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    desc, _ = oci.add_layer(layout, io.BytesIO(make_tar(FILES)), "zstd")
    config = oci.build_config(None, [LayerHistory("sha256:" + "0" * 64)], created=EPOCH)
    oci.write_image(layout, config, [desc], tag="t")
    image = oci.resolve_image(layout, "t")
    with pytest.raises(DigestMismatchError, match="diff_id"):
        layer_files(image)


def test_blob_writer_expected_digest(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    with pytest.raises(DigestMismatchError):
        layout.write_blob(b"abc", expected_digest="sha256:" + "0" * 64)
    assert not list((tmp_path / "l" / "blobs" / "sha256").iterdir())
    assert not list((tmp_path / "l").glob(".tmp*"))
    with layout.blob_writer() as w:
        w.write(b"never committed")
    assert not list((tmp_path / "l").glob(".tmp*"))


def test_missing_blob_and_oversize_manifest(tmp_path: Path) -> None:
    desc = build(tmp_path / "img")
    layout = OciLayout.open(tmp_path / "img")
    layout.blob_path(desc.digest).unlink()
    with pytest.raises(oci.BlobNotFoundError, match="missing"):
        oci.resolve_image(layout, "latest")
    big = Descriptor(oci.OCI_MANIFEST, "sha256:" + "e" * 64, oci.MAX_MANIFEST_SIZE + 1)
    with pytest.raises(InvalidImageError, match="limit"):
        oci.read_blob(layout, big, max_size=oci.MAX_MANIFEST_SIZE)


def test_layer_count_must_match_diff_ids(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    desc, _ = oci.add_layer(layout, io.BytesIO(make_tar(FILES)), "gzip")
    config = oci.build_config(None, [], created=EPOCH)
    with pytest.raises(InvalidImageError, match="diff_ids"):
        oci.write_image(layout, config, [desc])


# -- archives --------------------------------------------------------------------


def test_archive_round_trip_and_reproducible(tmp_path: Path) -> None:
    build(tmp_path / "img", "v1", compression="zstd")
    build(tmp_path / "img", "v2", files={"x": b"y"})
    layout = OciLayout.open(tmp_path / "img")
    # A stray file in the layout does not go into the archive.
    (tmp_path / "img" / "blobs" / "sha256" / ("f" * 64)).write_bytes(b"stray")
    oci.write_archive(layout, tmp_path / "a.tar")
    oci.write_archive(layout, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        names = tf.getnames()
        assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
        assert "blobs/sha256/" + "f" * 64 not in names
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tf.getmembers())
    for tag in ("v1", "v2"):
        from_dir = oci.resolve_image(f"oci:{tmp_path / 'img'}:{tag}")
        from_tar = oci.resolve_image(f"oci-archive:{tmp_path / 'a.tar'}:{tag}")
        assert from_tar.digest == from_dir.digest
        assert layer_files(from_tar) == layer_files(from_dir)
    assert oci.OciArchive(tmp_path / "a.tar").tags() == ["v1", "v2"]
    with oci.extracted_archive(tmp_path / "a.tar") as extracted:
        assert extracted.tags() == ["v1", "v2"]


def test_open_output_archive(tmp_path: Path) -> None:
    target = tmp_path / "out" / "img.tar"
    with oci.open_output(f"oci-archive:{target}:mytag") as (layout, tag):
        assert tag == "mytag"
        desc, digests = oci.add_layer(layout, io.BytesIO(make_tar(FILES)), "gzip")
        cfg = oci.build_config(None, [LayerHistory(digests.diff_id)], created=EPOCH)
        m = oci.write_image(layout, cfg, [desc], tag=tag)
    assert oci.resolve_image(f"oci-archive:{target}:mytag").digest == m.digest
    assert not [p for p in target.parent.iterdir() if p.name != "img.tar"]
    # A failure inside the block leaves no archive behind.
    with pytest.raises(RuntimeError), oci.open_output(f"oci-archive:{tmp_path / 'no.tar'}"):
        raise RuntimeError("boom")
    assert not (tmp_path / "no.tar").exists()


def test_archive_ignores_hostile_members(tmp_path: Path) -> None:
    build(tmp_path / "img")
    oci.write_archive(OciLayout.open(tmp_path / "img"), tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar", "a") as tf:
        evil = tarfile.TarInfo("../../evil")
        evil.size = 4
        tf.addfile(evil, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("blobs/sha256/" + "9" * 64)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    archive = oci.OciArchive(tmp_path / "a.tar")
    assert not archive.has_blob("sha256:" + "9" * 64)
    assert oci.resolve_image(archive, "latest").layers
    assert not (tmp_path.parent.parent / "evil").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(make_tar({"a": b"b"}))
    with pytest.raises(InvalidImageError, match="not an OCI archive"):
        oci.OciArchive(tmp_path / "x.tar")
    (tmp_path / "y.tar.gz").write_bytes(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(InvalidImageError, match="compressed"):
        oci.OciArchive(tmp_path / "y.tar.gz")
    with pytest.raises(ImageNotFoundError):
        oci.resolve_image(f"oci-archive:{tmp_path / 'missing.tar'}")


# -- platforms -------------------------------------------------------------------


def multi_arch_layout(tmp_path: Path, *, nested: bool) -> tuple[OciLayout, dict[str, str]]:
    """One tag over amd64, arm64 and arm/v7 images: as a nested index or flat entries."""
    layout = OciLayout.create(tmp_path / "multi")
    digests: dict[str, str] = {}
    entries = []
    for arch in ("amd64", "arm64", "arm/v7"):
        desc, d = oci.add_layer(layout, io.BytesIO(make_tar({"arch": arch.encode()})), "gzip")
        cfg = oci.build_config(None, [LayerHistory(d.diff_id)], arch=arch, created=EPOCH)
        cdesc = layout.write_json_blob(cfg.to_json(), oci.OCI_CONFIG)
        body = oci.build_manifest(cdesc, [desc]).to_json()
        mdigest, size = layout.write_blob(body)
        entries.append(Descriptor(oci.OCI_MANIFEST, mdigest, size, platform=cfg.platform))
        digests[arch] = mdigest
    if nested:
        layout.add_manifest(
            Index(manifests=tuple(entries)).to_json(), "multi", media_type=oci.OCI_INDEX
        )
    else:
        tagged = [
            Descriptor(
                e.media_type,
                e.digest,
                e.size,
                platform=e.platform,
                annotations={oci.ANNOTATION_REF_NAME: "multi"},
            )
            for e in entries
        ]
        layout.write_index(Index(manifests=tuple(tagged)))
    return layout, digests


@pytest.mark.parametrize("nested", [True, False])
def test_platform_selection(tmp_path: Path, nested: bool) -> None:
    layout, digests = multi_arch_layout(tmp_path, nested=nested)
    ref = f"oci:{layout.path}:multi"
    for arch, want in [
        ("amd64", Platform("amd64")),
        ("arm64", Platform("arm64")),
        ("arm64", Platform("arm64", variant="v8")),
        ("arm/v7", Platform("arm", variant="v7")),
        ("arm/v7", Platform("arm")),
    ]:
        image = oci.resolve_image(ref, platform=want)
        assert image.digest == digests[arch]
        assert layer_files(image) == {"arch": arch.encode()}
        assert (image.index_descriptor is not None) == nested
    with pytest.raises(PlatformNotFoundError, match=r"s390x.*available: linux/amd64"):
        oci.resolve_image(ref, platform=Platform("s390x"))
    with pytest.raises(PlatformNotFoundError):
        oci.resolve_image(ref, platform=Platform("arm", variant="v6"))
    # Without a platform the host's is chosen.
    assert oci.resolve_image(ref).config.architecture == oci.host_platform().architecture
    # The nested index travels with the archive.
    oci.write_archive(layout, tmp_path / "multi.tar")
    got = oci.resolve_image(
        f"oci-archive:{tmp_path / 'multi.tar'}:multi", platform=Platform("arm64")
    )
    assert got.digest == digests["arm64"]


# -- configs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x86_64", ("amd64", None)),
        ("amd64", ("amd64", None)),
        ("aarch64", ("arm64", None)),
        ("arm64/v8", ("arm64", None)),
        ("armv7l", ("arm", "v7")),
        ("arm/v6", ("arm", "v6")),
        ("armhf", ("arm", "v7")),
        ("i686", ("386", None)),
        ("i386", ("386", None)),
        ("ppc64le", ("ppc64le", None)),
        ("ppc64el", ("ppc64le", None)),
        ("s390x", ("s390x", None)),
        ("riscv64", ("riscv64", None)),
        ("X86_64", ("amd64", None)),
    ],
)
def test_arch_aliases(name: str, expected: tuple[str, str | None]) -> None:
    assert oci.normalize_arch(name) == expected


@pytest.mark.parametrize("name", ["sparc", "amd64/v7", "arm/v9", ""])
def test_bad_arch(name: str) -> None:
    with pytest.raises(ConfigError):
        oci.normalize_arch(name)


def test_label_edits() -> None:
    edits = oci.parse_label_edits(["a=1", "b=x=y", "c=", "a-", "gone-"])
    assert edits == [("a", "1"), ("b", "x=y"), ("c", ""), ("a", None), ("gone", None)]
    assert oci.apply_label_edits({"gone": "1", "keep": "2"}, edits) == {
        "keep": "2",
        "b": "x=y",
        "c": "",
    }
    for bad in ["novalue", "=v", "-"]:
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            oci.parse_label_edits([bad])
    assert oci.parse_annotations(["org.opencontainers.image.version=1.0"]) == {
        "org.opencontainers.image.version": "1.0"
    }
    with pytest.raises(ConfigError):
        oci.parse_annotations(["k-"])


PODMAN_INSPECT = [
    {
        "Id": "f" * 64,
        "Digest": "sha256:" + "1" * 64,
        "RepoTags": ["localhost/app:latest"],
        "Created": "2024-01-01T00:00:00.123456789Z",
        "Config": {
            "Env": ["PATH=/usr/bin", "LANG=C.UTF-8"],
            "Cmd": ["/bin/sh"],
            "Entrypoint": None,
            "WorkingDir": "/app",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"maintainer": "me", "old": "1"},
            "StopSignal": "SIGTERM",
        },
        "Version": "",
        "Author": "someone",
        "Architecture": "arm64",
        "Os": "linux",
        "Size": 1234,
        "RootFS": {"Type": "layers", "Layers": ["sha256:" + "2" * 64]},
        "Labels": {"maintainer": "me", "old": "1"},
        "Annotations": {},
        "ManifestType": oci.OCI_MANIFEST,
        "History": [{"created": "2024-01-01T00:00:00Z", "created_by": "RUN x"}],
    }
]
DOCKER_INSPECT = [
    {
        "Id": "sha256:" + "3" * 64,
        "Container": "abc",
        "ContainerConfig": {"Hostname": "abc", "Cmd": ["/bin/sh", "-c", "#(nop)"]},
        "DockerVersion": "20.10.0",
        "Config": {
            "Hostname": "",
            "AttachStdin": False,
            "Tty": False,
            "Env": ["PATH=/bin"],
            "Cmd": ["bash"],
            "Image": "sha256:" + "4" * 64,
            "Volumes": {"/data": {}},
            "WorkingDir": "",
            "Entrypoint": ["/entry"],
            "OnBuild": None,
            "Labels": None,
        },
        "Architecture": "arm",
        "Variant": "v7",
        "Os": "linux",
        "RootFS": {"Type": "layers", "Layers": []},
    }
]


def test_config_from_podman_inspect() -> None:
    cfg = oci.config_from_inspect(PODMAN_INSPECT)
    assert (cfg.architecture, cfg.os, cfg.variant, cfg.author) == (
        "arm64",
        "linux",
        None,
        "someone",
    )
    assert cfg.config == {
        "Env": ["PATH=/usr/bin", "LANG=C.UTF-8"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/app",
        "User": "1000:1000",
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"maintainer": "me", "old": "1"},
        "StopSignal": "SIGTERM",
    }
    assert cfg.diff_ids == () and cfg.history == ()


def test_config_from_docker_inspect() -> None:
    cfg = oci.config_from_inspect(DOCKER_INSPECT[0])
    assert (cfg.architecture, cfg.variant) == ("arm", "v7")
    assert cfg.config == {
        "Env": ["PATH=/bin"],
        "Cmd": ["bash"],
        "Volumes": {"/data": {}},
        "Entrypoint": ["/entry"],
    }


def test_bad_inspect_json() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        oci.config_from_inspect(PODMAN_INSPECT * 2)
    with pytest.raises(ConfigError, match="not podman/docker inspect"):
        oci.config_from_inspect({"foo": 1})
    with pytest.raises(ConfigError, match="container"):
        oci.config_from_inspect({"Config": {}, "State": {}, "Image": "x"})


def test_build_config_from_base_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inspect.json").write_text(json.dumps(PODMAN_INSPECT))
    base = oci.load_base_config(tmp_path / "inspect.json")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    diff = "sha256:" + "5" * 64
    cfg = oci.build_config(
        base,
        [LayerHistory(diff, created_by="chunkah build", comment="all")],
        labels=oci.parse_label_edits(["old-", "new=yes"]),
        arch="x86_64",
    )
    assert cfg.created == "1970-01-02T00:00:00Z"
    assert cfg.architecture == "amd64"
    assert cfg.labels == {"maintainer": "me", "new": "yes"}
    assert cfg.diff_ids == (diff,)
    assert [h.to_dict() for h in cfg.history] == [
        {"created": "1970-01-02T00:00:00Z", "created_by": "chunkah build", "comment": "all"}
    ]
    assert cfg.config["Cmd"] == ["/bin/sh"]
    # An OCI config file is accepted as a base as it is.
    (tmp_path / "config.json").write_bytes(cfg.to_json())
    assert oci.load_base_config(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        oci.load_base_config(tmp_path / "bad.json")


def test_source_date_epoch_parsing() -> None:
    assert oci.source_date_epoch({}) is None
    assert oci.source_date_epoch({"SOURCE_DATE_EPOCH": ""}) is None
    assert oci.source_date_epoch({"SOURCE_DATE_EPOCH": "42"}) == 42
    for bad in ["abc", "-1", "1.5"]:
        with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
            oci.source_date_epoch({"SOURCE_DATE_EPOCH": bad})


def test_removing_all_labels_drops_the_key() -> None:
    base = ImageConfig(architecture="amd64", config={"Labels": {"a": "1"}, "Cmd": ["x"]})
    cfg = oci.build_config(base, [], labels=[("a", None)], created=0)
    assert "Labels" not in cfg.config and cfg.config["Cmd"] == ["x"]


# -- inspect ---------------------------------------------------------------------


def test_inspect_image(tmp_path: Path) -> None:
    desc = build(
        tmp_path / "img",
        "v1",
        compression="zstd",
        labels=["org.opencontainers.image.title=demo"],
        annotations={"org.example.note": "hi"},
    )
    info = oci.inspect_image(f"oci:{tmp_path / 'img'}:v1")
    assert info["digest"] == desc.digest
    assert info["mediaType"] == oci.OCI_MANIFEST
    assert info["platform"] == "linux/amd64"
    assert info["labels"] == {"org.opencontainers.image.title": "demo"}
    assert info["annotations"] == {"org.example.note": "hi"}
    assert info["tags"] == ["v1"]
    assert info["created"] == "2023-11-14T22:13:20Z"
    (layer,) = info["layers"]
    assert layer["compression"] == "zstd" and layer["mediaType"] == oci.OCI_LAYER_ZSTD
    assert layer["diffId"].startswith("sha256:")
    assert info["layersSize"] == layer["size"]
    json.dumps(info)  # JSON-ready as it is
