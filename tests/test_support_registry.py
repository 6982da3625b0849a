"""The docker-registry fixture: it answers, logs every request, and stops."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.blobserver import start_blob_server
from support.registry import RunningRegistry, parse_access_log, start_registry
from support.tools import skopeo_copy, skopeo_inspect, umoci_init_new, umoci_insert

ZERO = "sha256:" + "0" * 64


def test_parse_access_log() -> None:
    text = (
        "127.0.0.1 - - [22/Nov/2026:01:23:20 +0000] "
        '"GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"\n'
        'time="2026-11-22T01:23:20Z" level=info msg="response completed"\n'
        "127.0.0.1 - - [22/Nov/2026:01:23:21 +0000] "
        '"HEAD /v2/x/blobs/sha256:ab HTTP/1.1" 404 - "" "skopeo/1.9"\n'
        "127.0.0.1 - - [22/Nov/2026:01:23:22 +0000] "
        '"GET /v2/x/manifests/t HTTP/1.1" 206 1234 "" "x"\n'
    )
    entries = parse_access_log(text)
    assert [(e.method, e.status, e.bytes) for e in entries] == [
        ("GET", 200, 2),
        ("HEAD", 404, 0),
        ("GET", 206, 1234),
    ]
    assert entries[1].is_blob and entries[2].is_manifest and entries[1].agent == "skopeo/1.9"


def test_fixture_answers_and_logs(docker_registry: RunningRegistry) -> None:
    assert docker_registry.host.startswith("127.0.0.1:")
    assert docker_registry.alive()
    mark = docker_registry.access_offset()
    with urllib.request.urlopen(docker_registry.url + "/v2/", timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{docker_registry.url}/v2/nothing/blobs/{ZERO}", timeout=10)
    assert exc.value.code == 404
    entries = docker_registry.access_entries(since=mark)
    assert [(e.method, e.path, e.status) for e in entries] == [
        ("GET", "/v2/", 200),
        ("GET", f"/v2/nothing/blobs/{ZERO}", 404),
    ]
    assert entries[0].bytes == 2  # "{}"
    assert entries[1].bytes > 0


def test_start_and_stop_by_pid(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "reg")
    pid = reg.pid
    try:
        assert os.path.exists(f"/proc/{pid}")
        assert reg.storage.is_dir() and reg.config.is_file()
    finally:
        reg.stop()
    assert not reg.alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(reg.url + "/v2/", timeout=2)
    reg.stop()  # idempotent


def test_two_registries_get_different_ports(tmp_path: Path) -> None:
    a = start_registry(tmp_path / "a")
    try:
        b = start_registry(tmp_path / "b")
        try:
            assert a.host != b.host
        finally:
            b.stop()
    finally:
        a.stop()


def _push_small_image(tmp_path: Path, ref: str) -> dict:
    layout = tmp_path / "layout"
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(os.urandom(200_000))
    umoci_init_new(layout, "t")
    umoci_insert(layout, "t", src, "/data")
    skopeo_copy(f"oci:{layout}:t", ref)
    manifest = skopeo_inspect(ref, raw=True)
    assert isinstance(manifest, dict)
    return manifest


def test_redirect_registry_sends_blobs_to_the_blob_server(
    tmp_path: Path, docker_registry_redirect: RunningRegistry
) -> None:
    reg = docker_registry_redirect
    assert reg.blob_server is not None
    manifest = _push_small_image(tmp_path, reg.ref("redirect/x", "t"))
    layer = manifest["layers"][0]
    url = f"{reg.url}/v2/redirect/x/blobs/{layer['digest']}"
    reg.blob_server.take_requests()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kw: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(url, timeout=10)
    assert exc.value.code == 307
    location = exc.value.headers["Location"]
    assert location.startswith(reg.blob_server.url + "/docker/registry/v2/blobs/sha256/")

    # Following the redirect: a single range is a 206 with exactly those bytes.
    req = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 10-19/{layer['size']}"
        part = resp.read()
    with urllib.request.urlopen(location, timeout=10) as resp:
        whole = resp.read()
    assert len(whole) == layer["size"] and part == whole[10:20]
    assert "sha256:" + hashlib.sha256(whole).hexdigest() == layer["digest"]

    # Multi-range: multipart/byteranges.
    req = urllib.request.Request(location, headers={"Range": "bytes=0-3,100-103"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Type"].startswith("multipart/byteranges")
        body = resp.read()
    assert whole[0:4] in body and whole[100:104] in body

    logged = reg.blob_server.take_requests()
    assert [(r.range, r.status) for r in logged] == [
        ("bytes=10-19", 206),
        (None, 200),
        ("bytes=0-3,100-103", 206),
    ]
    assert [r.bytes for r in logged][:2] == [10, layer["size"]]

    # A real client follows the redirect.
    skopeo_copy(reg.ref("redirect/x", "t"), f"oci:{tmp_path / 'pulled'}:t")
    pulled = reg.blob_server.take_requests()
    assert any(r.path.endswith("/data") and r.bytes == layer["size"] for r in pulled), pulled


@pytest.mark.parametrize(("behaviour", "status"), [("full", 200), ("416", 416), ("501", 501)])
def test_blob_server_multirange_behaviours(tmp_path: Path, behaviour: str, status: int) -> None:
    (tmp_path / "f").write_bytes(bytes(range(256)) * 10)
    srv = start_blob_server(tmp_path, multirange=behaviour)
    try:
        req = urllib.request.Request(srv.url + "/f", headers={"Range": "bytes=0-1,5-6"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                got, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            got, body = exc.code, exc.read()
        assert got == status
        assert (body == bytes(range(256)) * 10) if status == 200 else body == b""
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(srv.url + "/../etc/passwd", timeout=10)
        assert exc.value.code == 404
    finally:
        srv.stop()
