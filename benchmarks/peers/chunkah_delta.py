"""Our per-file deltas: ``chunkah delta`` v_k -> v_k+1, then ``chunkah update`` uses them.

Both versions built with ``chunkah build`` defaults (the workspace's ``chunked`` image)
and pushed to docker-registry under their own repository (``SERIES/delta``, so the
chunk-only strategy's repository never holds a delta artifact); ``chunkah delta`` runs
on the two local layouts and publishes the artifact into the registry (distribution
2.8: the ``sha256-HEX`` tag fallback).  A fresh sysroot is updated to v_k (setup), then
the measured ``chunkah update`` to v_k+1; bytes and requests from the registry's
access log, everything included (manifests, config, TOCs, the referrers probe, the
fallback index, the artifact manifest, the delta index, delta and chunk ranges).
Then the same update with ``--no-deltas`` from a fresh v_k sysroot, for comparison.

``measure_delta_update(step)`` is the stable entry point for other benchmarks
(benchmarks/bench_delta.py).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from typing import Any

from support.tools import skopeo_copy

from .process import run_measured
from .strategy import Step, Strategy
from .treecheck import check_tree
from .workspace import BUILD_TIMEOUT, EPOCH, Wire, chunkah_cmd, clamps_for

TIMEOUT = 3600.0


def _ref(step: Step, k: int) -> tuple[str, str]:
    """(docker:// reference, oci: reference) of version k in the delta repository."""
    ws = step.ws
    img = ws.image("chunked", k)
    ref = ws.registry.ref(f"{step.series}/delta", f"{img.tag}-{ws.code}")
    key = ("delta", k)
    if key not in ws._pushed:
        skopeo_copy(f"oci:{img.root}:{img.tag}", ref, preserve_digests=True, timeout=BUILD_TIMEOUT)
        ws._pushed[key] = ref
    return ref, f"oci:{img.root}:{img.tag}"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _update(step: Step, ref: str, sysroot: Any, *extra: str) -> tuple[Any, Wire]:
    mark = step.ws.mark()
    m = run_measured(
        chunkah_cmd("update", ref, "--sysroot", sysroot, "--plain-http", "--json", "-q", *extra),
        timeout=TIMEOUT,
    ).check()
    return m, step.ws.wire_since(mark)


def measure_delta_update(step: Step, *, chunks_too: bool = True) -> dict[str, Any]:
    """Generate and publish the deltas, update with them, check the tree; returns
    ``bytes``/``requests``/``seconds`` of the update, ``generate`` (chunkah delta's wall
    time, peak RSS of its main process, its report), ``plan`` and, with ``chunks_too``,
    ``chunks_only`` (the same update with ``--no-deltas``)."""
    old_ref, old_oci = _ref(step, step.k)
    new_ref, new_oci = _ref(step, step.k + 1)
    cpu = _children_cpu()
    gen = run_measured(
        chunkah_cmd("delta", old_oci, new_oci, "-o", new_ref, "--plain-http", "--json", "-q"),
        timeout=TIMEOUT,
        env={"SOURCE_DATE_EPOCH": str(EPOCH)},
    ).check()
    cpu = _children_cpu() - cpu  # the process and its encoding workers (reaped, so counted)
    made = json.loads(gen.stdout)
    out: dict[str, Any] = {
        "generate": {
            "seconds": gen.seconds,
            "cpu_seconds": cpu,
            "maxrss_mib": gen.maxrss_mib,
            "report": made,
        }
    }
    sysroot = step.work / "sysroot"
    for label, extra in (("deltas", ()), ("chunks_only", ("--no-deltas",))):
        if label == "chunks_only" and not chunks_too:
            continue
        shutil.rmtree(sysroot, ignore_errors=True)
        _update(step, old_ref, sysroot)
        m, w = _update(step, new_ref, sysroot, *extra)
        report = json.loads(m.stdout)
        tree = check_tree(
            step.new_tree,
            os.path.realpath(sysroot / "current"),
            mtime_clamp=clamps_for(step.new_tree),
        )
        row = {
            "bytes": w.bytes,
            "requests": w.requests,
            "seconds": m.seconds,
            "maxrss_mib": m.maxrss_mib,
            "tree": tree,
            "wire": w.to_json(),
            "phases": report.get("phases"),
            "plan": report.get("plan"),
        }
        if label == "deltas":
            out.update(row)
        else:
            out["chunks_only"] = row
    shutil.rmtree(sysroot, ignore_errors=True)
    return out


def _run(step: Step) -> dict[str, Any]:
    r = measure_delta_update(step, chunks_too=False)
    plan = r.get("plan") or {}
    made = r["generate"]["report"]
    d = plan.get("deltas") or {}
    return {
        "bytes": r["bytes"],
        "requests": r["requests"],
        "seconds": r["seconds"],
        "maxrss_mib": r["maxrss_mib"],
        "tree": r["tree"],
        "wire": r["wire"],
        "phases": r["phases"],
        "plan": plan,
        "build": {"seconds": r["generate"]["seconds"], "delta_bytes": made.get("delta_bytes")},
        "note": f"{plan.get('files', {}).get('delta', 0)} files by delta "
        f"({d.get('applied', 0)} applied, {d.get('failed', 0)} fell back); "
        f"delta generated in {r['generate']['seconds']:.1f} s",
    }


STRATEGIES = [
    # quick=False: chunkah delta costs about a CPU-minute on tiny, beyond bench-quick's budget
    Strategy(
        "chunkah-delta",
        "chunkah update with per-file deltas (ours)",
        _run,
        ours=True,
        quick=False,
    )
]
