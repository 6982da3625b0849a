"""podman zstd:chunked partial pull (Debian's podman 4.3.1, overlay storage, as root).

Images: ``chunkah build --compression gzip --max-layers 1`` converted by
``skopeo copy --dest-compress-format zstd:chunked`` (skopeo's blob-info cache deleted
first), pushed to docker-registry.  A fresh storage with ``enable_partial_images``
pulls v_k (setup), then the measured pull of v_k+1; the image is mounted and diffed.
podman 4.3.1's partial pull sets every mtime to the pull time: mtimes not compared.
"""

from __future__ import annotations

import shutil
from typing import Any

from support.podman import make_storage

from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import check_tree

TIMEOUT = 3600.0


def _pull(storage: Any, ref: str) -> Any:
    return run_measured(
        ["podman", "pull", "--quiet", "--tls-verify=false", ref], timeout=TIMEOUT, env=storage.env
    ).check()


def _run(step: Step) -> dict[str, Any]:
    if shutil.which("podman") is None:
        raise Unavailable("podman is not installed")
    ws = step.ws
    old_ref, new_ref = ws.ref("zstd-chunked", step.k), ws.ref("zstd-chunked", step.k + 1)
    storage = make_storage(step.work / "storage", driver="overlay", partial_pulls=True)
    try:
        mark = ws.mark()
        m = _pull(storage, old_ref)
        setup = {"seconds": m.seconds, "wire": ws.wire_since(mark).to_json()}
        mark = ws.mark()
        m = _pull(storage, new_ref)
        wire = ws.wire_since(mark)
        image_id = m.stdout.strip().splitlines()[-1]
        with storage.mounted(image_id) as root:
            tree = check_tree(step.new_tree, root, check_mtime=False, ignore=(".",))
    finally:
        storage.close()
    image = ws.image("zstd-chunked", step.k + 1)
    return {
        "bytes": wire.bytes,
        "requests": wire.requests,
        "seconds": m.seconds,
        "maxrss_mib": m.maxrss_mib,
        "tree": tree,
        "wire": wire.to_json(),
        "setup": setup,
        "build": image.build,
        "note": "podman 4.3.1, overlay, enable_partial_images; root dir and mtimes not compared",
    }


STRATEGIES = [Strategy("podman-zstd-chunked", "podman zstd:chunked partial pull", _run)]
