"""chunkah.oci against real tools: skopeo reads what we write, we read what skopeo
writes, umoci unpacks our gzip images.  No mocks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from support.tools import run, skopeo_copy, skopeo_inspect, umoci_unpack

from chunkah import oci
from chunkah.oci import LayerHistory, OciLayout

EPOCH = 1_700_000_000
FILES = {
    "etc/os-release": b"ID=chunkah\n",
    "usr/bin/tool": b"\x7fELF" + bytes(range(256)) * 64,
    "usr/share/doc/readme.txt": b"read me\n" * 1000,
}


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
            info.size, info.mtime = len(files[name]), EPOCH
            info.mode = 0o755 if "/bin/" in name else 0o644
            tf.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def build(path: Path, tag: str, compression: str) -> oci.Descriptor:
    layout = OciLayout.create(path)
    desc, digests = oci.add_layer(
        layout, io.BytesIO(make_tar(FILES)), compression, annotations={"org.example.layer": "1"}
    )
    config = oci.build_config(
        oci.config_from_inspect(
            {"Architecture": "x86_64", "Os": "linux", "Config": {"Cmd": ["/usr/bin/tool"]}}
        ),
        [LayerHistory(digests.diff_id, created_by="chunkah test")],
        labels=[("org.opencontainers.image.title", "interop")],
        created=EPOCH,
    )
    return oci.write_image(layout, config, [desc], tag=tag, annotations={"org.example": "m"})


def read_layer_files(image: oci.ResolvedImage) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i in range(len(image.layers)):
        with image.open_layer(i) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
            for member in tf:
                if member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    out[member.name.removeprefix("./")] = f.read()
    return out


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_skopeo_inspect_agrees(tmp_path: Path, compression: str) -> None:
    desc = build(tmp_path / "img", "v1", compression)
    ref = f"oci:{tmp_path / 'img'}:v1"
    ours = oci.resolve_image(ref)
    raw = skopeo_inspect(ref, raw=True, parse=False)
    assert isinstance(raw, bytes)
    assert raw == ours.manifest_bytes
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == desc.digest
    info = skopeo_inspect(ref)
    assert isinstance(info, dict)
    assert info["Digest"] == desc.digest
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Labels"] == {"org.opencontainers.image.title": "interop"}
    assert info["Layers"] == [ours.layers[0].digest]
    assert info["Created"] == "2023-11-14T22:13:20Z"
    config = skopeo_inspect(ref, config=True)
    assert isinstance(config, dict)
    assert config == json.loads(ours.config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(make_tar(FILES)).hexdigest()]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_skopeo_copy_then_read_back(tmp_path: Path, compression: str) -> None:
    desc = build(tmp_path / "img", "v1", compression)
    skopeo_copy(f"oci:{tmp_path / 'img'}:v1", f"oci:{tmp_path / 'other'}:copied")
    copied = oci.resolve_image(f"oci:{tmp_path / 'other'}:copied")
    assert read_layer_files(copied) == FILES
    assert copied.config.labels == {"org.opencontainers.image.title": "interop"}
    # skopeo keeps our blobs as they are, so the manifest digest survives the copy.
    assert copied.digest == desc.digest


def test_read_what_skopeo_recompresses(tmp_path: Path) -> None:
    build(tmp_path / "img", "v1", "gzip")
    src = f"oci:{tmp_path / 'img'}:v1"
    skopeo_copy(src, f"oci:{tmp_path / 'z'}:zst", "--dest-compress-format", "zstd")
    skopeo_copy(src, f"oci-archive:{tmp_path / 'img.tar'}:arch")
    zst = oci.resolve_image(f"oci:{tmp_path / 'z'}:zst")
    assert zst.layers[0].media_type == oci.OCI_LAYER_ZSTD
    assert read_layer_files(zst) == FILES
    from_archive = oci.resolve_image(f"oci-archive:{tmp_path / 'img.tar'}:arch")
    assert read_layer_files(from_archive) == FILES


def test_skopeo_reads_our_archive(tmp_path: Path) -> None:
    with oci.open_output(f"oci-archive:{tmp_path / 'ours.tar'}:v1") as (layout, tag):
        desc, d = oci.add_layer(layout, io.BytesIO(make_tar(FILES)), "zstd")
        cfg = oci.build_config(None, [LayerHistory(d.diff_id)], arch="amd64", created=EPOCH)
        m = oci.write_image(layout, cfg, [desc], tag=tag)
    info = skopeo_inspect(f"oci-archive:{tmp_path / 'ours.tar'}:v1")
    assert isinstance(info, dict) and info["Digest"] == m.digest
    skopeo_copy(f"oci-archive:{tmp_path / 'ours.tar'}:v1", f"oci:{tmp_path / 'back'}:v1")
    assert read_layer_files(oci.resolve_image(f"oci:{tmp_path / 'back'}:v1")) == FILES


@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack keeps owners only as root")
def test_umoci_unpacks_gzip_image(tmp_path: Path) -> None:
    build(tmp_path / "img", "v1", "gzip")
    rootfs = umoci_unpack(tmp_path / "img", "v1", tmp_path / "bundle")
    for name, data in FILES.items():
        path = rootfs / name
        assert path.read_bytes() == data
        want = 0o755 if "/bin/" in name else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want
        assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)
    assert stat.S_IMODE((rootfs / "usr" / "bin").stat().st_mode) == 0o755
    # umoci also judges our config: the runtime spec carries the Cmd.
    spec = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert spec["process"]["args"] == ["/usr/bin/tool"]


def test_umoci_written_layout_reads_back(tmp_path: Path) -> None:
    layout = tmp_path / "umoci"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:base"])
    (tmp_path / "payload.txt").write_text("from umoci\n")
    run(["umoci", "insert", "--image", f"{layout}:base", tmp_path / "payload.txt", "/payload.txt"])
    image = oci.resolve_image(f"oci:{layout}:base")
    with image.open_layer_blob(0) as blob:
        expected = run(["gzip", "-dc"], input=blob.read()).stdout
    with image.open_layer(0) as layer:
        plain = layer.read()
    assert plain == expected
    # umoci 0.4.7 ends this tar right after the file data (no padding, no end
    # blocks), which Python's tarfile refuses; the header and payload are there.
    assert plain[:11] == b"payload.txt" and plain[512:] == b"from umoci\n"
    info = oci.inspect_image(f"oci:{layout}:base")
    assert info["layers"][0]["compression"] == "gzip"
