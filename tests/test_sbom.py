"""CycloneDX SBOMs from real package databases, validated against the official 1.5 schema.

The validator is cyclonedx-python-lib's ``JsonStrictValidator`` (the schema bundled
with the library, draft-07, ``additionalProperties: false`` everywhere); versions are
compared with what the package managers' own tools report, purls with the reference
implementation (packageurl-python).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from support.debian import DebianRootfs
from support.owners_fixtures import (
    build_alpm_root,
    build_rpm_root,
    file_entry,
    numpy_target,
    rpm_query,
    write_apk_root,
)

from chunkah.owners import BinaryPackage, Component, assign_components
from chunkah.sbom import (
    binary_purl,
    canonical_purl,
    created_epoch,
    cyclonedx_sbom,
    sbom_json,
)
from chunkah.tree import Tree, read_dir
from chunkah.tree.model import Entry, EntryType

EPOCH = 1700000000
VALIDATOR = JsonStrictValidator(SchemaVersion.V1_5)


def validate(document: bytes | str) -> None:
    text = document.decode() if isinstance(document, bytes) else document
    error = VALIDATOR.validate_str(text)
    assert error is None, str(error)[:2000]


def sbom_of(tree: Tree, **kw: Any) -> tuple[dict[str, Any], bytes]:
    own = assign_components(tree, build_epoch=EPOCH)
    bom = cyclonedx_sbom(own, source_description="test", build_epoch=EPOCH, **kw)
    data = sbom_json(bom)
    validate(data)
    assert json.loads(data) == bom
    return bom, data


def libraries(bom: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Library components by (name, version)."""
    out = {}
    for c in bom["components"]:
        if c["type"] == "library":
            key = (c["name"], c.get("version", ""))
            assert key not in out, key
            out[key] = c
    return out


def prop(component: dict[str, Any], name: str) -> str | None:
    values = [p["value"] for p in component.get("properties", []) if p["name"] == name]
    assert len(values) <= 1
    return values[0] if values else None


def check_purl(purl: str, type_: str, name: str, version: str, **qualifiers: str) -> None:
    """The purl parses to these parts and is in the reference implementation's canonical form."""
    p = PackageURL.from_string(purl)
    assert (p.type, p.name, p.version) == (type_, name, version)
    for k, v in qualifiers.items():
        assert (p.qualifiers or {}).get(k) == v, (purl, k)  # type: ignore[union-attr]
    assert p.to_string() == purl


def assert_common(bom: dict[str, Any]) -> None:
    refs = [c["bom-ref"] for c in bom["components"]] + [bom["metadata"]["component"]["bom-ref"]]
    assert len(refs) == len(set(refs))
    assert bom["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    tool = bom["metadata"]["tools"]["components"][0]
    assert tool["name"] == "chunkah" and tool["version"]
    assert "dependencies" not in bom
    assert bom["serialNumber"].startswith("urn:uuid:")


# --- the validator itself ------------------------------------------------------------


def test_validator_rejects_broken_documents() -> None:
    """Proves the validator runs: each of these breaks the 1.5 schema."""
    tree = Tree([Entry(path=b"", type=EntryType.DIR, mode=0o755)])
    good = cyclonedx_sbom(
        assign_components(tree, build_epoch=EPOCH), source_description="x", build_epoch=EPOCH
    )
    validate(sbom_json(good))
    broken: list[dict[str, Any]] = []
    b = json.loads(sbom_json(good))
    b["components"] = [{"type": "bogus-type", "name": "x"}]
    broken.append(b)
    b = json.loads(sbom_json(good))
    b["serialNumber"] = "not-a-urn"
    broken.append(b)
    b = json.loads(sbom_json(good))
    b["components"] = [{"type": "library", "name": "x", "unknown-field": 1}]
    broken.append(b)
    b = json.loads(sbom_json(good))
    b["metadata"]["timestamp"] = "yesterday"
    broken.append(b)
    for doc in broken:
        assert VALIDATOR.validate_str(json.dumps(doc)) is not None, doc


# --- dpkg: the real Debian tiny rootfs -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_tree(debian_tiny_rootfs: DebianRootfs) -> Tree:
    return read_dir(debian_tiny_rootfs.path, skip_special_files=True)


@pytest.fixture(scope="module")
def tiny_sbom(tiny_tree: Tree) -> tuple[dict[str, Any], bytes]:
    return sbom_of(tiny_tree)


def dpkg_query(root: Path) -> list[tuple[str, str, str, str]]:
    """(package, arch, version, source package) of every installed package, from dpkg."""
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f",
            "${Package}\t${Architecture}\t${Version}\t${source:Package}\t${db:Status-Abbrev}\n",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, arch, version, source, status = line.split("\t")
        if status.startswith("ii"):
            rows.append((name, arch, version, source))
    return rows


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_dpkg_packages_match_dpkg_query(
    tiny_sbom: tuple[dict[str, Any], bytes], debian_tiny_rootfs: DebianRootfs
) -> None:
    bom, _ = tiny_sbom
    assert_common(bom)
    libs = libraries(bom)
    want = dpkg_query(debian_tiny_rootfs.path)
    assert len(want) >= 30
    assert len(libs) == len(want)
    for name, arch, version, source in want:
        c = libs[(name, version)]
        check_purl(c["purl"], "deb", name, version, arch=arch, distro="bookworm")
        assert PackageURL.from_string(c["purl"]).namespace == "debian"
        assert c["bom-ref"] == c["purl"]
        assert prop(c, "chunkah:component") == f"dpkg/{source}"


def test_dpkg_known_packages(tiny_sbom: tuple[dict[str, Any], bytes]) -> None:
    bom, _ = tiny_sbom
    by_name = {name: c for (name, _), c in libraries(bom).items()}
    # An epoch stays in a deb version, unencoded (canonical purl form).
    attr = by_name["libattr1"]
    assert attr["version"] == "1:2.5.1-4"
    assert attr["purl"] == "pkg:deb/debian/libattr1@1:2.5.1-4?arch=amd64&distro=bookworm"
    assert prop(attr, "chunkah:component") == "dpkg/attr"
    assert prop(attr, "chunkah:component:purl") == (
        "pkg:deb/debian/attr@1:2.5.1-4?arch=source&distro=bookworm"
    )
    # Binaries of one source: glibc's libc6 and libc-bin, '+' percent-encoded.
    libc6 = by_name["libc6"]
    assert prop(libc6, "chunkah:component") == "dpkg/glibc"
    assert libc6["purl"].startswith("pkg:deb/debian/libc6@2.36-9%2Bdeb12u")
    assert prop(by_name["libc-bin"], "chunkah:component") == "dpkg/glibc"
    assert by_name["usr-is-merged"]["purl"].endswith("?arch=all&distro=bookworm")
    os_comp = bom["components"][0]
    assert os_comp["type"] == "operating-system"
    assert (os_comp["name"], os_comp["version"]) == ("debian", "12")
    # Unclaimed files are not components; their size is a metadata property.
    meta_props = {p["name"]: int(p["value"]) for p in bom["metadata"]["properties"]}
    assert 0 < meta_props["chunkah:bytes:unclaimed"] < meta_props["chunkah:bytes:total"]
    assert all(prop(c, "chunkah:component") != "chunkah/unclaimed" for c in bom["components"])


def test_reproducible(
    debian_tiny_rootfs: DebianRootfs, tiny_sbom: tuple[dict[str, Any], bytes]
) -> None:
    """A fresh read of the same tree gives byte-identical output; other inputs change
    the serial number."""
    _, first = tiny_sbom
    tree = read_dir(debian_tiny_rootfs.path, skip_special_files=True)
    _, second = sbom_of(tree)
    assert first == second
    own = assign_components(tree, build_epoch=EPOCH)
    other_epoch = cyclonedx_sbom(own, source_description="test", build_epoch=EPOCH + 1)
    with_digest = cyclonedx_sbom(
        own, source_description="test", build_epoch=EPOCH, image_digest="sha256:" + "a" * 64
    )
    serials = {json.loads(first)["serialNumber"], other_epoch["serialNumber"]}
    serials.add(with_digest["serialNumber"])
    assert len(serials) == 3
    validate(sbom_json(with_digest))
    assert with_digest["metadata"]["component"]["version"] == "sha256:" + "a" * 64


# --- rpm, alpm, apk, Python ----------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("rpm") is None,
    reason="needs Debian's rpm package",
)
def test_rpm(tmp_path: Path) -> None:
    root = build_rpm_root(tmp_path)
    bom, _ = sbom_of(read_dir(root))
    assert_common(bom)
    libs = libraries(bom)
    want = rpm_query(root, "-qa", "--qf", "%{NAME} %{EPOCHNUM} %{VERSION}-%{RELEASE} %{ARCH}\\n")
    rows = [line.split() for line in want.splitlines() if not line.startswith("gpg-pubkey")]
    assert len(libs) == len(rows) == 3
    for name, epoch, vr, arch in rows:
        evr = f"{epoch}:{vr}" if epoch != "0" else vr
        c = libs[(name, evr)]
        if epoch != "0":
            check_purl(c["purl"], "rpm", name, vr, arch=arch, epoch=epoch)
        else:
            check_purl(c["purl"], "rpm", name, vr, arch=arch)
            assert "epoch=" not in c["purl"]
    hello_data = libs[("hello-data", "2:1.0-3")]
    assert hello_data["purl"] == "pkg:rpm/hello-data@1.0-3?arch=noarch&epoch=2"
    assert prop(hello_data, "chunkah:component") == "rpm/hello"
    assert prop(libs[("world", "0.5-1")], "chunkah:component") == "rpm/world"


@pytest.mark.skipif(
    shutil.which("pacman") is None or shutil.which("bsdtar") is None,
    reason="needs Debian's pacman-package-manager and libarchive-tools",
)
def test_alpm(tmp_path: Path) -> None:
    bom, _ = sbom_of(read_dir(build_alpm_root(tmp_path)))
    assert_common(bom)
    libs = libraries(bom)
    assert set(libs) == {("foo-bin", "1.2-1"), ("foo-data", "1.2-1"), ("bar", "3.0-2")}
    foo = libs[("foo-bin", "1.2-1")]
    assert foo["purl"] == "pkg:alpm/arch/foo-bin@1.2-1?arch=x86_64"
    check_purl(foo["purl"], "alpm", "foo-bin", "1.2-1", arch="x86_64")
    assert prop(foo, "chunkah:component") == "alpm/foo"
    assert prop(libs[("foo-data", "1.2-1")], "chunkah:component") == "alpm/foo"
    assert prop(libs[("bar", "3.0-2")], "chunkah:component") == "alpm/bar"


def test_apk(tmp_path: Path) -> None:
    root = tmp_path / "apk"
    write_apk_root(root)
    bom, _ = sbom_of(read_dir(root))
    assert_common(bom)
    libs = libraries(bom)
    assert set(libs) == {
        ("busybox", "1.36.1-r15"),
        ("busybox-binsh", "1.36.1-r15"),
        ("zlib", "1.3.1-r0"),
    }
    binsh = libs[("busybox-binsh", "1.36.1-r15")]
    assert binsh["purl"] == "pkg:apk/alpine/busybox-binsh@1.36.1-r15?arch=x86_64"
    check_purl(binsh["purl"], "apk", "busybox-binsh", "1.36.1-r15", arch="x86_64")
    assert prop(binsh, "chunkah:component") == "apk/busybox"


def test_python_numpy() -> None:
    bom, _ = sbom_of(read_dir(numpy_target("2.4.0")))
    assert_common(bom)
    libs = libraries(bom)
    numpy = libs[("numpy", "2.4.0")]
    assert numpy["purl"] == "pkg:pypi/numpy@2.4.0"
    check_purl(numpy["purl"], "pypi", "numpy", "2.4.0")
    assert prop(numpy, "chunkah:component") == "python/numpy"


# --- pseudo components: xattr, big files, unclaimed ----------------------------------


def test_xattr_bigfile_unclaimed(tmp_path: Path) -> None:
    big = b"\x00\x01big" * (300 << 10)  # 1.2 MiB: a big file
    spool = tmp_path / "spool"
    tree = Tree(
        [
            Entry(path=b"", type=EntryType.DIR, mode=0o755),
            Entry(
                path=b"app",
                type=EntryType.DIR,
                mode=0o755,
                xattrs=(("user.component", b"my app"),),
            ),
            file_entry(spool, b"app/run", b"#!/bin/sh\n"),
            file_entry(spool, b"blob.bin", big),
            file_entry(spool, b"etc-passwd", b"root:x:0:0::/root:/bin/sh\n"),
        ]
    )
    bom, _ = sbom_of(tree)
    assert_common(bom)
    by_type = {c["type"]: c for c in bom["components"]}
    assert set(by_type) == {"application", "file"}
    app = by_type["application"]
    assert app["name"] == "my app" and prop(app, "chunkah:component") == "xattr/my app"
    f = by_type["file"]
    assert f["name"] == "/blob.bin"
    assert f["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(big).hexdigest()}]
    assert prop(f, "chunkah:bytes") == str(len(big))
    meta = {p["name"]: p["value"] for p in bom["metadata"]["properties"]}
    assert meta["chunkah:bytes:unclaimed"] == str(len(b"root:x:0:0::/root:/bin/sh\n"))


# --- purls -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "source_purl", "pkg", "want"),
    [
        (
            "dpkg",
            "pkg:deb/debian/gmp@2%3A6.2.1%2Bdfsg1-1.1?arch=source&distro=bookworm",
            BinaryPackage("libgmp10", "2:6.2.1+dfsg1-1.1", "amd64"),
            "pkg:deb/debian/libgmp10@2:6.2.1%2Bdfsg1-1.1?arch=amd64&distro=bookworm",
        ),
        (
            "rpm",
            "pkg:rpm/fedora/glibc@2.39-2.fc40?arch=src&epoch=1",
            BinaryPackage("glibc-langpack-en", "1:2.39-2.fc40", "x86_64"),
            "pkg:rpm/fedora/glibc-langpack-en@2.39-2.fc40?arch=x86_64&epoch=1",
        ),
        (
            "alpm",
            "pkg:alpm/arch/containers-common@1%3A0.47.4-4?arch=x86_64",
            BinaryPackage("containers-common", "1:0.47.4-4", "any"),
            "pkg:alpm/arch/containers-common@1:0.47.4-4?arch=any",
        ),
        (
            "python",
            "pkg:pypi/typing-extensions@4.12.2",
            BinaryPackage("typing_extensions", "4.12.2"),
            "pkg:pypi/typing-extensions@4.12.2",
        ),
        (
            "dpkg",
            "pkg:deb/debian/weird@1.0?arch=source",
            BinaryPackage("we ird", "1.0~rc1 #2", "amd64"),
            "pkg:deb/debian/we%20ird@1.0~rc1%20%232?arch=amd64",
        ),
    ],
)
def test_binary_purls(kind: str, source_purl: str, pkg: BinaryPackage, want: str) -> None:
    comp = Component(name=f"{kind}/x", kind=kind, purl=source_purl, packages=(pkg,))
    got = binary_purl(comp, pkg)
    assert got == want
    parsed = PackageURL.from_string(want)
    assert parsed.to_string() == want  # what the reference implementation writes
    assert canonical_purl(source_purl) == PackageURL.from_string(source_purl).to_string()


def test_no_purl_for_pseudo_components() -> None:
    comp = Component(name="xattr/a", kind="xattr")
    assert binary_purl(comp, BinaryPackage("a", "1")) is None


def test_created_epoch() -> None:
    assert created_epoch("2023-11-14T22:13:20Z") == EPOCH
    assert created_epoch("2023-11-14T22:13:20.123456789Z") == EPOCH
    assert created_epoch(None) > EPOCH
