"""``chunkah sbom`` and ``chunkah build --sbom`` as a user types them, judged by real tools:
the CycloneDX validator, skopeo 1.9, Debian's docker-registry and the embedded registry's
referrers API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from support.debian import DebianRootfs
from support.registry import RunningRegistry
from support.tools import skopeo_copy, skopeo_inspect

from chunkah.oci import OCI_EMPTY, OCI_INDEX, Descriptor, OciLayout, open_source, read_blob
from chunkah.sbom import CYCLONEDX_MEDIA_TYPE, find_referrers, referrers_tag

EPOCH = 1_700_000_000
VALIDATOR = JsonStrictValidator(SchemaVersion.V1_5)


def chunkah(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args], capture_output=True, env=env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"chunkah {' '.join(args)}: {proc.returncode}\n{proc.stderr!r}")
    return proc


def valid(document: bytes) -> dict[str, Any]:
    error = VALIDATOR.validate_str(document.decode())
    assert error is None, str(error)[:2000]
    bom: dict[str, Any] = json.loads(document)
    return bom


def packages(bom: dict[str, Any]) -> list[str]:
    return sorted(c["purl"] for c in bom["components"] if c["type"] == "library")


def test_sbom_of_a_directory(debian_tiny_rootfs: DebianRootfs, tmp_path: Path) -> None:
    out = chunkah("sbom", str(debian_tiny_rootfs.path))
    bom = valid(out.stdout)
    assert len(packages(bom)) >= 30
    assert bom["metadata"]["component"]["name"] == str(debian_tiny_rootfs.path)
    # -o FILE writes the same bytes; --format cyclonedx is the default.
    dest = tmp_path / "sbom.json"
    again = chunkah("sbom", str(debian_tiny_rootfs.path), "--format", "cyclonedx", "-o", str(dest))
    assert again.stdout == b""
    assert dest.read_bytes() == out.stdout


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/rootfs", b"not a directory"),
        ("oci:/nonexistent/layout", b"no such OCI layout"),
        ("oci-archive:/nonexistent.tar", b"nonexistent.tar"),
        ("docker://127.0.0.1:1/x:1;bad", b"invalid"),
    ],
)
def test_bad_source_is_exit_2(source: str, message: bytes) -> None:
    proc = chunkah("sbom", source, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr.startswith(b"chunkah: error: ") and message in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    proc = chunkah("sbom", str(tmp_path), "--format", "spdx", check=False)
    assert proc.returncode == 2 and b"invalid choice" in proc.stderr


@pytest.fixture(scope="module")
def built(debian_tiny_rootfs: DebianRootfs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sbom-build") / "layout"
    result = json.loads(
        chunkah(
            "build", str(debian_tiny_rootfs.path), "-o", f"oci:{out}:v1", "--sbom", "--json"
        ).stdout
    )
    assert result["sbom"]["digest"].startswith("sha256:")
    return out


def image_digest(layout: Path, tag: str = "v1") -> str:
    (desc,) = [d for d in OciLayout.open(layout).read_index().manifests if d.ref_name == tag]
    return desc.digest


def test_build_attaches_a_referrer(built: Path, debian_tiny_rootfs: DebianRootfs) -> None:
    layout = OciLayout.open(built)
    digest = image_digest(built)
    (ref,) = find_referrers(layout, digest, CYCLONEDX_MEDIA_TYPE)
    assert ref.extra["artifactType"] == CYCLONEDX_MEDIA_TYPE
    assert find_referrers(layout, digest, "application/spdx+json") == []
    assert find_referrers(layout, "sha256:" + "0" * 64) == []
    # index.json: the image (tagged), the artifact (untagged, with artifactType) and
    # the referrers-tag-schema index.
    entries = {d.digest: d for d in layout.read_index().manifests}
    assert entries[ref.digest].ref_name is None
    assert entries[ref.digest].extra["artifactType"] == CYCLONEDX_MEDIA_TYPE
    assert sorted(layout.tags()) == sorted(["v1", referrers_tag(digest)])
    manifest = json.loads(read_blob(layout, ref, max_size=1 << 20))
    assert manifest["artifactType"] == CYCLONEDX_MEDIA_TYPE
    assert manifest["subject"]["digest"] == digest
    assert manifest["subject"]["size"] == entries[digest].size
    assert manifest["config"]["mediaType"] == OCI_EMPTY
    assert manifest["config"]["size"] == 2 and manifest["config"]["data"] == "e30="
    assert (built / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes() == b"{}"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == CYCLONEDX_MEDIA_TYPE
    bom = valid(read_blob(layout, Descriptor.from_dict(layer), max_size=64 << 20))
    assert bom["metadata"]["component"] == {
        "type": "container",
        "bom-ref": "chunkah:image",
        "name": "v1",
        "version": digest,
        "hashes": [{"alg": "SHA-256", "content": digest[7:]}],
    }
    # Same packages as the SBOM of the directory itself.
    direct = valid(chunkah("sbom", str(debian_tiny_rootfs.path)).stdout)
    assert packages(bom) == packages(direct)


def test_image_still_resolves(built: Path) -> None:
    info = skopeo_inspect(f"oci:{built}:v1")
    assert info["Digest"] == image_digest(built)
    assert json.loads(chunkah("inspect", f"oci:{built}:v1", "--json").stdout)["digest"] == (
        image_digest(built)
    )


def test_sbom_of_the_built_image(built: Path) -> None:
    """``chunkah sbom oci:DIR:TAG`` reads the image back: same packages."""
    from_image = valid(chunkah("sbom", f"oci:{built}:v1").stdout)
    (ref,) = find_referrers(OciLayout.open(built), image_digest(built))
    manifest = json.loads(read_blob(OciLayout.open(built), ref, max_size=1 << 20))
    attached = json.loads(
        read_blob(
            OciLayout.open(built), Descriptor.from_dict(manifest["layers"][0]), max_size=1 << 26
        )
    )
    assert packages(from_image) == packages(attached)


def test_rebuild_is_idempotent_and_prunes(debian_tiny_rootfs: DebianRootfs, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    ref = f"oci:{out}:v1"
    chunkah("build", str(debian_tiny_rootfs.path), "-o", ref, "--sbom")
    first = (out / "index.json").read_bytes()
    chunkah("build", str(debian_tiny_rootfs.path), "-o", ref, "--sbom")
    assert (out / "index.json").read_bytes() == first  # reproducible, nothing duplicated
    old = image_digest(out)
    # A different image under the same tag: the old image's SBOM and fallback tag go.
    chunkah("build", str(debian_tiny_rootfs.path), "-o", ref, "--sbom", "--prune", "/usr/share/doc")
    layout = OciLayout.open(out)
    new = image_digest(out)
    assert new != old
    assert find_referrers(layout, old) == []
    assert len(find_referrers(layout, new)) == 1
    assert layout.tags() == sorted(["v1", referrers_tag(new)])


def test_oci_archive_destination(debian_tiny_rootfs: DebianRootfs, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    chunkah("build", str(debian_tiny_rootfs.path), "-o", f"oci-archive:{archive}:v1", "--sbom")
    source = open_source(f"oci-archive:{archive}:v1")
    (desc,) = [d for d in source.read_index().manifests if d.ref_name == "v1"]
    assert len(find_referrers(source, desc.digest, CYCLONEDX_MEDIA_TYPE)) == 1
    assert skopeo_inspect(f"oci-archive:{archive}:v1")["Digest"] == desc.digest


def test_skopeo_pushes_it_by_the_referrers_tag(
    built: Path, docker_registry: RunningRegistry
) -> None:
    """skopeo 1.9 copies only the image with ``--all oci:DIR:TAG`` and cannot address an
    untagged manifest; the referrers-tag index carries the SBOM to a registry without
    the referrers API (distribution 2.8), artifact manifest digest unchanged."""
    digest = image_digest(built)
    tag = referrers_tag(digest)
    repo = f"{docker_registry.host}/sbom-push"
    skopeo_copy(f"oci:{built}:v1", f"docker://{repo}:v1", preserve_digests=True)
    skopeo_copy(f"oci:{built}:{tag}", f"docker://{repo}:{tag}", "--all")
    accept = f"{OCI_INDEX}, application/vnd.oci.image.manifest.v1+json"
    req = urllib.request.Request(
        f"http://{docker_registry.host}/v2/sbom-push/manifests/{tag}", headers={"Accept": accept}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        listing = json.loads(resp.read())
    (ref,) = find_referrers(OciLayout.open(built), digest)
    assert [m["digest"] for m in listing["manifests"]] == [ref.digest]
    req = urllib.request.Request(
        f"http://{docker_registry.host}/v2/sbom-push/manifests/{ref.digest}",
        headers={"Accept": accept},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["subject"]["digest"] == digest


def test_embedded_registry_serves_it_as_a_referrer(built: Path, tmp_path: Path) -> None:
    """The layout served by ``chunkah serve``: the OCI 1.1 referrers API lists the SBOM."""
    from test_serve import ServerThread

    root = tmp_path / "root"
    shutil.copytree(built, root / "app")  # the server keeps state inside the layout
    server = ServerThread(root).start()
    try:
        digest = image_digest(built)
        query = urllib.parse.urlencode({"artifactType": CYCLONEDX_MEDIA_TYPE})
        url = f"{server.url}/v2/app/referrers/{digest}?{query}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            listing = json.loads(resp.read())
    finally:
        server.stop()
    (ref,) = find_referrers(OciLayout.open(built), digest)
    assert [(m["digest"], m.get("artifactType")) for m in listing["manifests"]] == [
        (ref.digest, CYCLONEDX_MEDIA_TYPE)
    ]
