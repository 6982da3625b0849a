"""Shared fixtures: a real registry, real Debian root filesystems, a hand-made tree.

Helpers live in ``tests/support`` (import them as ``from support.treediff import
assert_trees_equal``; pytest puts ``tests/`` on ``sys.path`` for this conftest).
Session fixtures run once per pytest-xdist worker; the Debian cache is shared
between workers and runs through a file lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import debian
from support.handmade import HandmadeTree, make_handmade_tree
from support.registry import RunningRegistry, start_registry


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_root: the test needs uid 0 (devices, owners)")
    # Builds in tests use a fast zstd level (the default, 16, is tuned for fetch size,
    # not speed); the level changes sizes, never correctness.  A test that needs the
    # default clears the variable itself.
    os.environ.setdefault("CHUNKAH_ZSTD_LEVEL", "3")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (devices, foreign owners, security.* xattrs)")
    for item in items:
        if "needs_root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1:<free port>.

    Shared by the tests of one worker: use a unique repository name per test.
    ``.host`` for ``docker://HOST/REPO:TAG``, ``.url``, ``.access_log`` and
    ``.access_entries(since=.access_offset())`` to count requests and bytes.
    """
    reg = start_registry(tmp_path_factory.mktemp("docker-registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def docker_registry_redirect(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningRegistry]:
    """docker-registry whose blob GETs answer 307 to a Range-capable static server.

    Like a registry behind a CDN: ``.blob_server.requests`` logs what the
    redirected requests asked for (Range header) and got (status, bytes).
    Multi-range requests get ``multipart/byteranges``; for other behaviours
    start your own with ``start_registry(dir, redirect=True, multirange="full")``.
    """
    reg = start_registry(tmp_path_factory.mktemp("docker-registry-redirect"), redirect=True)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def debian_tiny_rootfs() -> debian.DebianRootfs:
    """A 33-package Debian bookworm rootfs (cached; about 20 s to build once).

    ``.path`` is the extracted directory (dev/ emptied), ``.tar`` mmdebstrap's
    tarball.  Shared and cached: do not modify it, copy it (``debian.copy_tree``).
    """
    return debian.build_rootfs(debian.TINY)


@pytest.fixture(scope="session")
def debian_minbase_rootfs() -> debian.DebianRootfs:
    """``mmdebstrap --variant=minbase bookworm`` (cached; about 35 s to build once)."""
    return debian.build_rootfs(debian.MINBASE)


@pytest.fixture
def handmade_tree(tmp_path: Path) -> HandmadeTree:
    """A fresh hand-made tree with every entry type (see support.handmade)."""
    return make_handmade_tree(tmp_path / "handmade")
