"""The docker-registry fixture: it answers, logs every request, and stops."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.registry import RunningRegistry, parse_access_log, start_registry

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
