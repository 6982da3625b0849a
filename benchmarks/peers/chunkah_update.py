"""Our chunk-level update: ``chunkah update`` fetches the missing chunks by range requests.

Both versions built with ``chunkah build`` defaults (packed layers, chunked zstd + TOC)
and pushed to docker-registry; a fresh sysroot is updated to v_k (setup), then the
measured ``chunkah update`` to v_k+1; then once more to the same image (it must fetch
only manifest and config).  Bytes and requests from the registry's access log.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .process import Measured, run_measured
from .strategy import Step, Strategy
from .treecheck import check_tree
from .workspace import Wire, chunkah_cmd, clamps_for

TIMEOUT = 3600.0


def update(step: Step, ref: str, sysroot: Path) -> tuple[Measured, Wire]:
    mark = step.ws.mark()
    m = run_measured(
        chunkah_cmd("update", ref, "--sysroot", sysroot, "--plain-http", "--json", "-q"),
        timeout=TIMEOUT,
    ).check()
    return m, step.ws.wire_since(mark)


def _run(step: Step) -> dict[str, Any]:
    ws = step.ws
    old_ref, new_ref = ws.ref("chunked", step.k), ws.ref("chunked", step.k + 1)
    sysroot = step.work / "sysroot"
    m, w = update(step, old_ref, sysroot)
    setup = {"seconds": m.seconds, "maxrss_mib": m.maxrss_mib, "wire": w.to_json()}
    m, w = update(step, new_ref, sysroot)
    report = json.loads(m.stdout)
    current = os.path.realpath(sysroot / "current")
    tree = check_tree(step.new_tree, current, mtime_clamp=clamps_for(step.new_tree))
    again, wa = update(step, new_ref, sysroot)
    kinds = {k.split(" ", 1)[1] for k in wa.by_kind}
    shutil.rmtree(sysroot, ignore_errors=True)
    image = ws.image("chunked", step.k + 1)
    plan = report.get("plan") or {}
    return {
        "bytes": w.bytes,
        "requests": w.requests,
        "seconds": m.seconds,
        "maxrss_mib": m.maxrss_mib,
        "tree": tree,
        "wire": w.to_json(),
        "setup": setup,
        "build": image.build,
        "reported": {k: report.get(k) for k in ("fetched_bytes", "requests", "seconds")},
        "phases": report.get("phases"),
        "plan": plan,
        "unchanged": {
            "seconds": again.seconds,
            "wire": wa.to_json(),
            "only_manifest_and_config": kinds <= {"manifest", "config"},
        },
        "note": f"{image.build['layers']} layers; {plan.get('ranges', '?')} ranges planned; "
        "same image again: "
        + ("manifest+config only" if kinds <= {"manifest", "config"} else "**fetched more**")
        + f" ({wa.bytes} B)",
    }


STRATEGIES = [Strategy("chunkah-update", "chunkah update (ours)", _run, ours=True)]
