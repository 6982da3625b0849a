"""podman with private storage, for pulls judged (and timed) in tests and benchmarks.

``podman_storage(workdir, driver="vfs")`` gives a ``PodmanStorage`` whose
graphroot, runroot, tmp dir and engine state all live under *workdir*, selected
through ``CONTAINERS_STORAGE_CONF`` / ``CONTAINERS_CONF`` /
``CONTAINERS_REGISTRIES_CONF`` (nothing of the machine's podman state is touched).
``partial_pulls=True`` (overlay only) enables zstd:chunked partial pulls with the
options RESEARCH.md measured::

    pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}

``storage.pull(ref)`` pulls (plain HTTP for loopback registries) and returns the
image id; ``timed_pull(storage, ref)`` returns the wall time as well (count bytes
at the registry's access log: ``RunningRegistry.access_entries``).
``storage.mounted(image)`` mounts an image read-only for a tree comparison and
unmounts it afterwards; ``close()`` unmounts everything and removes the storage.

podman 4.3.1 on Debian 12, as root: vfs works everywhere; overlay needs a
filesystem that supports it under *workdir* (ext4 /tmp does here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .tools import ToolError, is_loopback_docker_ref, run

PARTIAL_PULL_OPTIONS = (
    'pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}'
)


@dataclass(frozen=True)
class PullResult:
    """One ``podman pull``: the image id and how long it took (wall seconds)."""

    image_id: str
    seconds: float
    stderr: str


@dataclass
class PodmanStorage:
    """A private podman storage; run podman against it with ``podman(...)``."""

    workdir: Path
    driver: str
    partial_pulls: bool
    env: dict[str, str] = field(default_factory=dict)
    _mounted: set[str] = field(default_factory=set)

    @property
    def graphroot(self) -> Path:
        return self.workdir / "root"

    @property
    def runroot(self) -> Path:
        return self.workdir / "run"

    def podman(
        self, *args: str, timeout: float = 600.0, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """``podman ARGS`` against this storage (fails with the full output)."""
        return run(["podman", *args], env=self.env, timeout=timeout, check=check)

    def pull(self, ref: str, *, timeout: float = 600.0) -> str:
        """Pull ``ref`` (``docker://`` optional) and return the image id."""
        return self.timed_pull(ref, timeout=timeout).image_id

    def timed_pull(self, ref: str, *, timeout: float = 600.0) -> PullResult:
        """Pull ``ref`` and measure the wall time of the ``podman pull`` process."""
        args = ["pull", "--quiet"]
        if is_loopback_docker_ref(ref if ref.startswith("docker://") else "docker://" + ref):
            args.append("--tls-verify=false")
        args.append(ref if ref.startswith("docker://") else "docker://" + ref)
        start = time.perf_counter()
        proc = self.podman(*args, timeout=timeout)
        seconds = time.perf_counter() - start
        image_id = proc.stdout.decode().strip().splitlines()[-1]
        return PullResult(image_id, seconds, proc.stderr.decode(errors="replace"))

    def mount(self, image: str) -> Path:
        """``podman image mount IMAGE``: the image's merged tree (unmount when done)."""
        path = Path(self.podman("image", "mount", image).stdout.decode().strip())
        self._mounted.add(image)
        return path

    def unmount(self, image: str) -> None:
        self.podman("image", "unmount", "--force", image, check=False)
        self._mounted.discard(image)

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """The image's tree for the duration of the ``with`` block."""
        path = self.mount(image)
        try:
            yield path
        finally:
            self.unmount(image)

    def remove_image(self, image: str) -> None:
        self.unmount(image)
        self.podman("rmi", "--force", image, check=False)

    def images(self) -> list[str]:
        out = self.podman("images", "--quiet", "--no-trunc").stdout.decode()
        return [line for line in out.split() if line]

    def close(self) -> None:
        """Unmount, remove every image and the storage directory itself."""
        for image in list(self._mounted):
            self.unmount(image)
        with contextlib.suppress(ToolError):
            self.podman("image", "unmount", "--all", "--force", check=False, timeout=120)
            self.podman("system", "reset", "--force", check=False, timeout=300)
        _umount_below(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _umount_below(path: Path) -> None:
    """Unmount anything still mounted under ``path`` (overlay leftovers), deepest first."""
    prefix = os.fspath(path.resolve()) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def write_configs(workdir: Path, driver: str, partial_pulls: bool) -> dict[str, str]:
    """storage.conf, containers.conf, registries.conf under ``workdir``; their env vars."""
    if partial_pulls and driver != "overlay":
        raise ValueError("podman does partial pulls only with the overlay driver")
    workdir.mkdir(parents=True, exist_ok=True)
    root, runroot, tmp = workdir / "root", workdir / "run", workdir / "tmp"
    for d in (root, runroot, tmp):
        d.mkdir(exist_ok=True)
    options = PARTIAL_PULL_OPTIONS if partial_pulls else ""
    storage = workdir / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "{driver}"\nrunroot = "{runroot}"\ngraphroot = "{root}"\n'
        f"[storage.options]\n{options}\n"
    )
    containers = workdir / "containers.conf"
    containers.write_text(
        "[engine]\n"
        f'tmp_dir = "{tmp}"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{workdir / "events.log"}"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    registries = workdir / "registries.conf"
    registries.write_text("unqualified-search-registries = []\n")
    return {
        "CONTAINERS_STORAGE_CONF": os.fspath(storage),
        "CONTAINERS_CONF": os.fspath(containers),
        "CONTAINERS_REGISTRIES_CONF": os.fspath(registries),
    }


def make_storage(
    workdir: str | os.PathLike[str], *, driver: str = "vfs", partial_pulls: bool = False
) -> PodmanStorage:
    """A fresh private storage in ``workdir`` (created; should be empty)."""
    path = Path(workdir)
    env = write_configs(path, driver, partial_pulls)
    return PodmanStorage(path, driver, partial_pulls, env)


@contextlib.contextmanager
def podman_storage(
    workdir: str | os.PathLike[str], *, driver: str = "vfs", partial_pulls: bool = False
) -> Iterator[PodmanStorage]:
    """``make_storage`` for a ``with`` block; everything is removed at the end."""
    storage = make_storage(workdir, driver=driver, partial_pulls=partial_pulls)
    try:
        yield storage
    finally:
        storage.close()


def timed_pull(storage: PodmanStorage, ref: str, *, timeout: float = 600.0) -> PullResult:
    """Pull ``ref`` into ``storage``; the result carries the wall time in seconds."""
    return storage.timed_pull(ref, timeout=timeout)


def podman_version(argv: Sequence[str] = ("podman", "--version")) -> str:
    return run(list(argv), timeout=60).stdout.decode().strip()
