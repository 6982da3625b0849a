"""A plain OCI client: ``skopeo copy`` into a local layout, then GNU tar unpacks the layers.

skopeo skips blobs the destination layout already has, so pulling v_k+1 into the
layout that holds v_k fetches only the layers v_k lacks: whole-layer reuse as any
registry client does it.  chunkah's packed layers hold disjoint paths (no
whiteouts), so unpacking them in manifest order with ``tar`` gives the image's tree.

GNU tar (and bsdtar) skip POSIX ACLs stored as ``SCHILY.xattr.system.posix_acl_*``
records (they read only their own ``SCHILY.acl.*`` text form); umoci and
containers/storage apply them.  ``unpack`` re-reads each layer for those records and
sets them, inside the timed client work.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import zstandard

from .process import Measured, run_measured
from .strategy import Step
from .treecheck import check_tree
from .workspace import EPOCH, Image, clamps_for

TIMEOUT = 3600.0


def pull(ref: str, layout: Path, tag: str) -> Measured:
    return run_measured(
        ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", ref,
         f"oci:{layout}:{tag}"],
        timeout=TIMEOUT,
    ).check()  # fmt: skip


_ACL = "SCHILY.xattr.system.posix_acl_"


def restore_acls(blob: Path, gzipped: bool, dest: Path) -> int:
    """Set the ACL xattrs of *blob*'s members under *dest* (what GNU tar left out)."""
    count = 0
    with open(blob, "rb") as f:
        raw = gzip.GzipFile(fileobj=f) if gzipped else zstandard.ZstdDecompressor().stream_reader(f)
        with raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for member in tf:
                for key, value in member.pax_headers.items():
                    if key.startswith(_ACL):
                        name = key[len("SCHILY.xattr.") :]
                        target = dest / member.name
                        data = value.encode("utf-8", "surrogateescape")
                        os.setxattr(target, name, data, follow_symlinks=False)
                        count += 1
    return count


def unpack(image: Image, layout: Path, dest: Path) -> list[Measured]:
    """Unpack image's layers (their blobs read from *layout*) into *dest*, in order."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    runs = []
    for desc in image.layers:
        algo, hexdigest = desc["digest"].split(":", 1)
        blob = layout / "blobs" / algo / hexdigest
        comp = "--gzip" if "gzip" in desc["mediaType"] else "--zstd"
        m = run_measured(
            ["tar", comp, "-xpf", blob, "--xattrs", "--xattrs-include=*", "--acls",
             "--numeric-owner", "--same-owner", "-C", dest],
            timeout=TIMEOUT,
        ).check()  # fmt: skip
        t0 = time.perf_counter()
        restore_acls(blob, comp == "--gzip", dest)
        m.seconds += time.perf_counter() - t0
        runs.append(m)
    return runs


def pull_update(step: Step, kind: str, *, fresh: bool) -> dict[str, Any]:
    """Pull image(kind, k+1) into a layout holding image(kind, k) (or an empty one), unpack."""
    ws = step.ws
    layout, dest = step.work / "layout", step.work / "rootfs"
    setup: dict[str, Any] = {}
    if not fresh:
        mark = ws.mark()
        m = pull(ws.ref(kind, step.k), layout, "old")
        setup = {"seconds": m.seconds, "wire": ws.wire_since(mark).to_json()}
    new_ref = ws.ref(kind, step.k + 1)
    mark = ws.mark()
    got = pull(new_ref, layout, "new")
    wire = ws.wire_since(mark)
    image = ws.image(kind, step.k + 1)
    untar = unpack(image, layout, dest)
    seconds = got.seconds + sum(m.seconds for m in untar)
    # A single-layer build clamps every mtime to SOURCE_DATE_EPOCH; packed builds per component.
    clamp = EPOCH if image.build["layers"] == 1 else clamps_for(step.new_tree)
    tree = check_tree(step.new_tree, dest, mtime_clamp=clamp)
    shutil.rmtree(dest, ignore_errors=True)
    old = ws.image(kind, step.k)
    reused = len({d["digest"] for d in image.layers} & {d["digest"] for d in old.layers})
    return {
        "bytes": wire.bytes,
        "requests": wire.requests,
        "seconds": seconds,
        "maxrss_mib": max([got.maxrss_mib, *(m.maxrss_mib for m in untar)]),
        "tree": tree,
        "wire": wire.to_json(),
        "setup": setup,
        "build": image.build,
        "note": f"{image.build['layers']} layers, "
        + ("fresh pull" if fresh else f"{reused} reused")
        + f"; skopeo copy {got.seconds:.2f} s + tar {seconds - got.seconds:.2f} s",
    }
