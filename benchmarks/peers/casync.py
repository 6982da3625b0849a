"""casync seeded extract over HTTP (Debian's casync, default chunk sizes 16/64/256 KiB).

``casync make`` of the new tree into a chunk store (build); nginx serves the index
and the store; ``casync extract --seed=<old tree>`` fetches the chunks the seed
lacks, one GET each.  Bytes and requests from nginx's access log.
"""

from __future__ import annotations

import shutil
from typing import Any

from .httpd import serve_directory
from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import check_tree

TIMEOUT = 3600.0


def _run(step: Step) -> dict[str, Any]:
    if shutil.which("casync") is None:
        raise Unavailable("casync is not installed (Debian package casync)")
    srv_root = step.work / "srv"
    srv_root.mkdir(parents=True)
    make = run_measured(
        ["casync", "make", f"--store={srv_root / 'store'}", srv_root / "new.caidx",
         f"{step.new_tree}/"],
        timeout=TIMEOUT,
    ).check()  # fmt: skip
    dest = step.work / "out"
    with serve_directory(srv_root, step.work / "nginx") as srv:
        mark = srv.mark()
        m = run_measured(
            ["casync", "extract", f"--store={srv.url}/store", f"--seed={step.old_tree}/",
             f"{srv.url}/new.caidx", f"{dest}/"],
            timeout=TIMEOUT,
        ).check()  # fmt: skip
        requests, nbytes, statuses = srv.since(mark)
    tree = check_tree(step.new_tree, dest)
    shutil.rmtree(dest, ignore_errors=True)
    return {
        "bytes": nbytes,
        "requests": requests,
        "seconds": m.seconds,
        "maxrss_mib": m.maxrss_mib,
        "tree": tree,
        "statuses": statuses,
        "build": {"seconds": make.seconds, "maxrss_mib": make.maxrss_mib, "tool": "casync make"},
        "note": "one GET per missing chunk",
    }


STRATEGIES = [Strategy("casync", "casync seeded extract over HTTP", _run)]
