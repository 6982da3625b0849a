#!/usr/bin/env python3
"""Per-file deltas side by side with OSTree static deltas and zstd --patch-from (issue 10).

    python benchmarks/bench_delta.py [--series tiny,numpy,app,os] [--max-steps N]
                                     [--cache DIR] [--name NAME]

For every step v_k -> v_k+1 of each series (benchmarks/series.py), in one run:

- **chunkah update with deltas** (peers/chunkah_delta.py): both versions built with
  ``chunkah build`` defaults, pushed to Debian's docker-registry; ``chunkah delta`` on
  the two layouts publishes the artifact (tag fallback: distribution 2.8 has no
  referrers API); a host at v_k runs ``chunkah update`` to v_k+1.  Bytes = every
  response body the registry logged for that update (manifests, config, TOCs, the
  referrers probe, the fallback index, the artifact manifest, the delta index, delta
  and chunk ranges).  The tree is diffed against v_k+1.  The same update with
  ``--no-deltas`` is measured too.
- **OSTree static delta** (peers/ostree.py, Debian's ostree 2022.7): ``static-delta
  generate --inline`` between commits of the two trees; bytes = the delta file;
  applied offline and the checkout diffed against v_k+1.
- **zstd -19 --long=31 --patch-from**, tar to tar (peers/refdelta.py).

Delta computation time is ``chunkah delta``'s wall time (read TOCs, pair, encode on
both cores, push the artifact) against ``ostree static-delta generate``'s (commits
excluded).  Writes benchmarks/results/bench_delta.{json,md} after every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402,F401  (tests/ and the repo on sys.path)
import series as series_mod  # noqa: E402
from common import RESULTS_DIR, machine_info, markdown_table  # noqa: E402
from peers.chunkah_delta import measure_delta_update  # noqa: E402
from peers.ostree import measure_static_delta  # noqa: E402
from peers.refdelta import measure_zstd_patch_from  # noqa: E402
from peers.strategy import Step  # noqa: E402
from peers.treecheck import short  # noqa: E402
from peers.workspace import Workspace, code_state  # noqa: E402
from support import debian  # noqa: E402

#: issue 10's limits: our bytes / the peer's bytes, per series
LIMITS = {
    "tiny": ("ostree", 1.0),
    "app": ("ostree", 1.0),
    "os": ("ostree", 0.8),
    "numpy": ("zstd", 1.2),
}


#: What decides the bytes of a built image; the host, delta and registry code does not,
#: so changing it does not rebuild the series' images (the workspace keys images by this).
BUILD_CODE = (
    "chunkah/build.py", "chunkah/packing.py", "chunkah/cdc.py", "chunkah/_cdc_python.py",
    "chunkah/_cdc_tables.py", "chunkah/compression.py", "chunkah/_native", "chunkah/format",
    "chunkah/oci", "chunkah/owners", "chunkah/tree",
)  # fmt: skip


def build_code_state() -> str:
    names = subprocess.run(
        ["git", "-C", str(HERE.parent), "ls-files", *BUILD_CODE],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout.split()  # fmt: skip
    h = hashlib.sha256()
    for name in sorted(names):
        path = HERE.parent / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return "b" + h.hexdigest()[:11]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def measure_step(step: Step, scratch: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step.name, "code": code_state()}
    for name, job in (
        ("chunkah", lambda: measure_delta_update(step)),
        ("ostree", lambda: measure_static_delta(step.old_tree, step.new_tree, scratch / "ostree")),
        (
            "zstd",
            lambda: measure_zstd_patch_from(
                step.ws.tar(step.k), step.ws.tar(step.k + 1), workdir=scratch
            ),
        ),
    ):
        log(f"{step.series} {step.name}: {name}")
        t = time.perf_counter()
        try:
            row[name] = job()
        except Exception as exc:  # a peer that fails is a table cell, not the end of the run
            row[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            traceback.print_exc()
        row[name]["wall"] = time.perf_counter() - t
        if name == "ostree" and "error" not in row[name]:
            row[name]["generate_cpu_seconds"] = ostree_generate_cpu(scratch / "ostree")
        shutil.rmtree(scratch / "ostree", ignore_errors=True)
    return row


def ostree_generate_cpu(work: Path) -> float | None:
    """CPU seconds (user + system) of ``ostree static-delta generate`` for the same
    commits once more: on a shared machine CPU time is steadier than wall time."""
    repo = work / "server-repo"

    def rev(spec: str) -> str:
        return subprocess.run(
            ["ostree", "rev-parse", f"--repo={repo}", spec],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        old, new = rev("bench^"), rev("bench")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            ["ostree", "static-delta", "generate", f"--repo={repo}", f"--from={old}",
             f"--to={new}", "--inline", "--min-fallback-size=0", f"--filename={work / 'again'}"],
            capture_output=True, timeout=7200, check=True,
        )  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    except (subprocess.SubprocessError, OSError):
        return None
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(series: str, rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "step", "chunkah + deltas", "chunkah, chunks only", "OSTree static delta",
        "zstd -19 --patch-from (tar)", "ours / OSTree", "ours / zstd", "files by delta",
        "`chunkah delta` s (CPU s)", "`ostree static-delta generate` s (CPU s)",
        "trees (ours / OSTree)",
    ]  # fmt: skip
    body = []
    for r in rows:
        c, o, z = r.get("chunkah", {}), r.get("ostree", {}), r.get("zstd", {})
        plan = c.get("plan") or {}
        d = plan.get("deltas") or {}
        body.append(
            [
                r["step"],
                mb(c.get("bytes")) if "error" not in c else f"error: {c['error'][:80]}",
                mb((c.get("chunks_only") or {}).get("bytes")),
                mb(o.get("bytes")) if "error" not in o else f"error: {o['error'][:80]}",
                mb(z.get("bytes")) if "error" not in z else f"error: {z['error'][:80]}",
                _fmt(ratio(c.get("bytes"), o.get("bytes"))),
                _fmt(ratio(c.get("bytes"), z.get("bytes"))),
                f"{plan.get('files', {}).get('delta', 0)} ({d.get('failed', 0)} fell back)",
                _secs(
                    (c.get("generate") or {}).get("seconds"),
                    (c.get("generate") or {}).get("cpu_seconds"),
                ),
                _secs(o.get("generate_seconds"), o.get("generate_cpu_seconds")),
                f"{short(c.get('tree'))} / {'yes' if o.get('tree_ok') else short(o.get('tree'))}",
            ]
        )
    return [f"### {series}", "", markdown_table(head, body), ""]


def _secs(wall: float | None, cpu: float | None) -> str:
    if wall is None:
        return "—"
    return f"{wall:.1f}" + (f" ({cpu:.1f})" if cpu is not None else "")


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def verdicts(doc: dict[str, Any]) -> list[str]:
    out = ["### Against issue 10's limits", ""]
    for series, sdoc in doc["series"].items():
        peer, limit = LIMITS.get(series, ("ostree", 1.0))
        for r in sdoc["steps"]:
            ours = (r.get("chunkah") or {}).get("bytes")
            theirs = (r.get(peer) or {}).get("bytes")
            q = ratio(ours, theirs)
            g = (r.get("chunkah") or {}).get("generate") or {}
            o = r.get("ostree") or {}
            # CPU seconds when both were measured (steadier on a shared machine), else wall
            cpu = g.get("cpu_seconds") is not None and o.get("generate_cpu_seconds") is not None
            gen = g.get("cpu_seconds") if cpu else g.get("seconds")
            ogen = o.get("generate_cpu_seconds") if cpu else o.get("generate_seconds")
            state = "—" if q is None else ("met" if q <= limit else "**missed**")
            tq = ratio(gen, ogen)
            tstate = "—" if tq is None else ("met" if tq <= 1.0 else "**missed**")
            out.append(
                f"- {series} {r['step']}: {mb(ours)} vs {peer} {mb(theirs)} = {_fmt(q)} "
                f"(limit {limit}x: {state}); computing {gen or 0:.1f} s vs ostree generate "
                f"{ogen or 0:.1f} s {'CPU' if cpu else 'wall'} = {_fmt(tq)} ({tstate})"
            )
    out.append("")
    return out


def write(doc: dict[str, Any], name: str) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"# Per-file deltas (`bench_delta.py`, issue 10) — {doc['machine']['date']}", ""]
    lines.append(f"chunkah code {doc.get('code')}; machine {doc['machine']}")
    lines.append("")
    for series, sdoc in doc["series"].items():
        lines += table(series, sdoc["steps"])
    lines += verdicts(doc)
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", default="os,app,tiny,numpy")
    ap.add_argument("--max-steps", type=int, help="steps per series (default: all)")
    ap.add_argument("--cache", type=Path, default=debian.cache_root() / "bench-delta")
    ap.add_argument("--name", default="bench_delta")
    args = ap.parse_args()
    doc: dict[str, Any] = {"machine": machine_info(), "series": {}}
    for name in args.series.split(","):
        built = series_mod.build_series(name)
        ws = Workspace(
            args.cache / "work" / name, name, [b.path for b in built], [b.key for b in built]
        )
        ws.code = build_code_state()  # images: keyed by the build code only
        doc["code"] = code_state()
        doc["image_code"] = ws.code
        sdoc = doc["series"].setdefault(name, {"steps": []})
        steps = len(built) - 1 if args.max_steps is None else min(args.max_steps, len(built) - 1)
        scratch = args.cache / f"scratch-{os.getpid()}"  # two runs may share the cache
        try:
            for k in range(steps):
                old, new = built[k], built[k + 1]
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir(parents=True)
                step = Step(name, k, old.label, new.label, old.path, new.path, ws, scratch)
                sdoc["steps"].append(measure_step(step, scratch))
                write(doc, args.name)
        finally:
            ws.close()
            shutil.rmtree(scratch, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
