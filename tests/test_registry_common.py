"""Helpers shared by the registry client tests (no tests here).

Images are made with ``chunkah.oci``: one layer holding a file of seeded random
bytes (incompressible, so the layer blob is about the payload's size).
"""

from __future__ import annotations

import asyncio
import io
import random
import tarfile
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from chunkah import oci
from chunkah.registry.client import RegistryClient
from chunkah.registry.retry import RetryPolicy, Timeouts

T = TypeVar("T")

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.4, max_retry_after=3)


def run(coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
    """Run a coroutine with a hard time limit (a hung client fails, not blocks)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client(**kw: Any) -> RegistryClient:
    kw.setdefault("plain_http", True)
    kw.setdefault("auth_files", False)
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeouts", Timeouts(connect=5, idle=5, request=60))
    return RegistryClient(**kw)


def repo_name(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class SampleImage:
    layout: Path
    tag: str
    manifest: oci.Descriptor
    layer: oci.Descriptor
    blob: bytes  #: the layer blob as stored

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def make_image(
    path: Path,
    *,
    size: int = 2 << 20,
    seed: int = 1,
    tag: str = "v1",
    arch: str = "amd64",
    compression: str = "gzip",
) -> SampleImage:
    payload = random.Random(seed).randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("payload.bin")
        info.size, info.mtime = len(payload), 0
        tf.addfile(info, io.BytesIO(payload))
    layout = oci.OciLayout.create(path)
    desc, digests = oci.add_layer(layout, io.BytesIO(buf.getvalue()), compression)
    config = oci.build_config(
        None, [oci.LayerHistory(digests.diff_id, created_by="test")], arch=arch, created=1700000000
    )
    mdesc = oci.write_image(layout, config, [desc], tag=tag)
    blob = layout.blob_path(desc.digest).read_bytes()
    return SampleImage(path, tag, mdesc, desc, blob)


def scattered_ranges(size: int, count: int, max_len: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, max_len)
        out.append((rng.randrange(0, size - n), n))
    return out


def expected(blob: bytes, ranges: list[tuple[int, int]]) -> list[bytes]:
    return [blob[o : o + n] for o, n in ranges]
