#!/usr/bin/env python3
"""Every update strategy on every image series, side by side: tables, JSON, plots, a guard.

    python benchmarks/suite.py --profile quick      # tiny v1->v2, every strategy (CI)
    python benchmarks/suite.py --profile full       # every series, every step
    python benchmarks/suite.py --series app --strategies chunkah-update,rsync
    python benchmarks/suite.py --profile quick --update-thresholds

For each step v_k -> v_k+1 of each series (benchmarks/series.py) every strategy of
the registry (benchmarks/peers/__init__.py) runs for real: bytes on the wire (server
log) or the delta file a client downloads, requests, the client's wall time and peak
RSS, the server-side build time and size, and the resulting tree diffed against the
target.  Each finished cell is stored under ``$CHUNKAH_TEST_CACHE/bench-suite/cells``
keyed by the trees, the strategy's module and the chunkah code, so an interrupted run
resumes where it stopped (``--fresh`` ignores stored cells); the tables are rewritten
after every cell, so a partial run still leaves them.  Also a chunk-size sweep (update
bytes of the chunked format for several FastCDC settings, in memory).

Writes benchmarks/results/suite-PROFILE.{json,md} and suite-PROFILE-{bytes,chunksizes}.png.
With thresholds (benchmarks/thresholds.json, checked by default for the quick profile)
the exit status is 1 when one of our strategies' byte counts exceeds its limit, fails
or lands a wrong tree.  Times are reported, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402  (puts tests/ and the repo on sys.path)
import series as series_mod  # noqa: E402
from common import RESULTS_DIR, machine_info, markdown_table  # noqa: E402
from peers.strategy import Step, Strategy, Unavailable  # noqa: E402
from peers.treecheck import short  # noqa: E402
from peers.workspace import Workspace, code_state  # noqa: E402
from support import debian  # noqa: E402

THRESHOLDS = HERE / "thresholds.json"
# The kernel pair last: it is the longest (a 700 MB tree per version).
ALL_SERIES = ("tiny", "minbase", "app", "trixie-sid", "pystack", "numpy", "os")


@dataclass(frozen=True)
class Profile:
    series: tuple[str, ...]
    steps: tuple[int, ...] | None  # which steps (0: v1->v2, ...); None: all
    sweep: tuple[tuple[str, int], ...]  # (series, steps) for the chunk-size sweep
    check_thresholds: bool
    quick_only: bool  # only strategies marked quick


PROFILES = {
    # tiny v2->v3: both ends are built from what the mirror carries today (v1 needs an
    # older openssl that bookworm-updates will drop one day), and only two mmdebstrap runs.
    "quick": Profile(("tiny",), (1,), (), True, True),
    "full": Profile(ALL_SERIES, None, (("tiny", 2), ("app", 1)), False, False),
}


def strategies() -> list[Strategy]:
    """Every strategy of every module in the registry, in table order."""
    out: list[Strategy] = []
    for name in peers.MODULES:
        module = importlib.import_module(f"peers.{name}")
        for s in module.STRATEGIES:
            out.append(s)
    return out


def _module_hash(strategy: Strategy) -> str:
    module = sys.modules[strategy.run.__module__]
    files = [Path(module.__file__ or "")]
    # The shared pieces every peer leans on.
    files += [HERE / "peers" / f for f in ("workspace.py", "ocipull.py", "treecheck.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes() if f.is_file() else b"")
    return h.hexdigest()[:12]


def cell_key(strategy: Strategy, old_key: str, new_key: str, code: str) -> str:
    blob = json.dumps([strategy.name, old_key, new_key, _module_hash(strategy), code])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- running ---------------------------------------------------------------------------


def run_cell(strategy: Strategy, step: Step) -> dict[str, Any]:
    shutil.rmtree(step.work, ignore_errors=True)
    step.work.mkdir(parents=True)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        result = strategy.run(step)
        result["status"] = "ok"
    except Unavailable as exc:
        result = {"status": "unavailable", "error": str(exc)}
    except Exception as exc:  # a peer that fails is a result, not the end of the run
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        traceback.print_exc(file=sys.stderr)
    finally:
        shutil.rmtree(step.work, ignore_errors=True)
    result["cell_seconds"] = round(time.perf_counter() - t0, 2)
    result["load_before"] = round(load, 2)
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def run_suite(args: argparse.Namespace, profile: Profile, doc: dict[str, Any]) -> None:
    chosen = strategies()
    if args.strategies:
        wanted = set(args.strategies.split(","))
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"unknown strategies: {sorted(unknown)}")
        chosen = [s for s in chosen if s.name in wanted]
    elif profile.quick_only:
        chosen = [s for s in chosen if s.quick]
    names = args.series.split(",") if args.series else list(profile.series)
    cache = args.cache / "cells"
    for name in names:
        log(f"# {name}: building the series (cached after the first time)")
        spec = series_mod.SERIES[name]
        n = len(spec.versions)
        ks = [k for k in (profile.steps or range(n - 1)) if k < n - 1]
        needed = sorted({*ks, *(k + 1 for k in ks)})
        built = {k: series_mod.build_version(name, spec.versions[k]) for k in needed}
        versions = [
            {
                "label": b.label,
                "key": b.key,
                "bytes": b.bytes,
                "files": b.files,
                "fingerprint": _fingerprint(b),
            }
            for b in built.values()
        ]
        sdoc = doc["series"].setdefault(name, {"versions": versions, "steps": []})
        ws = Workspace(
            args.cache / "work" / name,
            name,
            [built[k].path if k in built else Path("/nonexistent") for k in range(n)],
            [v.key() for v in spec.versions],
            code=args.images_code,
        )
        doc["code"] = ws.code
        try:
            for k in ks:
                old, new = built[k], built[k + 1]
                step = Step(
                    name,
                    k,
                    old.label,
                    new.label,
                    old.path,
                    new.path,
                    ws,
                    args.cache / f"scratch-{os.getpid()}",
                )
                sstep = next((s for s in sdoc["steps"] if s["step"] == step.name), None)
                if sstep is None:
                    sstep = {"step": step.name, "cells": {}}
                    sdoc["steps"].append(sstep)
                for strategy in chosen:
                    key = cell_key(strategy, old.key, new.key, ws.code)
                    path = cache / name / step.name / f"{strategy.name}.json"
                    if not args.fresh and path.is_file():
                        stored = json.loads(path.read_text())
                        # --stored-only takes what is there: the chunkah code of a long
                        # run moves under it in a shared tree (each cell records its own).
                        if args.stored_only or (
                            stored.get("status") != "error"
                            and (
                                stored.get("key") == key
                                or _peer_cell_kept(args, strategy, stored, old.key, new.key)
                            )
                        ):
                            sstep["cells"][strategy.name] = stored
                            log(f"  {step.name} {strategy.name}: stored ({_brief(stored)})")
                            continue
                    if args.stored_only:
                        sstep["cells"][strategy.name] = {
                            "status": "not run",
                            "error": "not reached before the run was stopped",
                        }
                        continue
                    log(f"  {step.name} {strategy.name} ...")
                    # With --images-code the images' code is not the client's: record both
                    # (the client's as the cell starts, when its subprocesses load it).
                    client_code = code_state()
                    result = run_cell(strategy, step)
                    result["key"] = key
                    result["code"] = ws.code
                    result["client_code"] = client_code
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
                    sstep["cells"][strategy.name] = result
                    log(f"  {step.name} {strategy.name}: {_brief(result)}")
                    write_outputs(args, doc, final=False)
        finally:
            ws.close()


def _peer_cell_kept(
    args: argparse.Namespace, strategy: Strategy, stored: dict[str, Any], old: str, new: str
) -> bool:
    """``--keep-peer-cells``: a peer's cell measured on the same versions with the same
    peer module stays valid when only chunkah's code moved (it records its own code)."""
    if not args.keep_peer_cells or strategy.ours or stored.get("status") != "ok":
        return False
    return stored.get("key") == cell_key(strategy, old, new, str(stored.get("code")))


def _fingerprint(b: Any) -> str:
    """What the tree is: mmdebstrap's tarball digest (Debian), else the recipe key."""
    meta = json.loads((b.entry / "version.json").read_text())
    return str(meta.get("rootfs_tar_sha256") or f"recipe {b.key}")


def _brief(r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {str(r.get('error', ''))[:200]}"
    return (
        f"{r['bytes']:,} B, {r.get('requests')} req, {r.get('seconds', 0):.2f} s, "
        f"tree {short(r.get('tree'))}"
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- chunk-size sweep -----------------------------------------------------------------

#: FastCDC min/avg/max in KiB; the other format settings at their defaults.
SWEEP_CDC = ((4, 16, 64), (8, 32, 128), (16, 64, 256), (32, 128, 512), (64, 256, 1024))


def run_sweep(args: argparse.Namespace, profile: Profile, doc: dict[str, Any]) -> None:
    if args.no_sweep or args.series or args.strategies:
        return
    if args.stored_only:
        stored = args.cache / "cells"
        for name, _ in profile.sweep:
            for path in sorted((stored / name / "sweep").glob("*.json")):
                doc["sweep"] += json.loads(path.read_text())["rows"]
        return
    import bench_format

    from chunkah.format.toc import CdcSettings
    from chunkah.format.writer import ChunkedSettings

    code = code_state()
    for name, nsteps in profile.sweep:
        built = series_mod.build_series(name)[: nsteps + 1]
        for cdc in SWEEP_CDC:
            label = "/".join(str(x) for x in cdc)
            key = hashlib.sha256(
                json.dumps([label, [b.key for b in built], code]).encode()
            ).hexdigest()[:16]
            path = args.cache / "cells" / name / "sweep" / f"{label.replace('/', '-')}.json"
            if not args.fresh and path.is_file() and json.loads(path.read_text())["key"] == key:
                rows = json.loads(path.read_text())["rows"]
            else:
                log(f"  sweep {name} {label} ...")
                settings = ChunkedSettings(
                    cdc=CdcSettings(cdc[0] << 10, cdc[1] << 10, cdc[2] << 10)
                )
                t0 = time.perf_counter()
                images = [bench_format.build_image(b.path, settings, 64) for b in built]
                seconds = time.perf_counter() - t0
                rows = []
                for k in range(len(images) - 1):
                    fetched, frames, estimate = bench_format.update_bytes(images[k], images[k + 1])
                    rows.append(
                        {
                            "series": name,
                            "step": f"{built[k].label}->{built[k + 1].label}",
                            "cdc_kib": list(cdc),
                            "update_bytes": fetched,
                            "frames": frames,
                            "per_file_cdc_estimate": estimate,
                            "image_bytes": sum(layer.size for layer in images[k + 1]),
                            "build_seconds": round(seconds / len(images), 2),
                        }
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"key": key, "rows": rows}, indent=2) + "\n")
            doc["sweep"] = [
                r for r in doc["sweep"] if not (r["series"] == name and r["cdc_kib"] == list(cdc))
            ] + rows
            write_outputs(args, doc, final=False)


# --- thresholds ------------------------------------------------------------------------
#
# thresholds.json, per step: "bytes" (absolute limits, applied only when the step's trees
# are the ones they were recorded on: a rebuilt series whose packages moved on changes
# every count) and "ratios" (strategy bytes / full-gzip bytes, applied always).

RATIO_BASE = "full-gzip"


def _fingerprints(doc: dict[str, Any], series: str, step: str) -> list[str]:
    versions = {v["label"]: v for v in doc["series"][series]["versions"]}
    old, new = step.split("->")
    return [versions[old]["fingerprint"], versions[new]["fingerprint"]]


def check_thresholds(doc: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    """Failures: our strategies' bytes above their limits, errors, wrong trees."""
    failures = []
    tol = float(limits.get("tolerance", 0.0))
    ours = {s.name for s in strategies() if s.ours}
    for step_name, spec in limits.get("steps", {}).items():
        series, step = step_name.split(" ", 1)
        sdoc = doc["series"].get(series)
        sstep = next((s for s in (sdoc or {}).get("steps", []) if s["step"] == step), None)
        if sstep is None:
            continue
        cells = sstep["cells"]
        same_trees = spec.get("trees") == _fingerprints(doc, series, step)
        if not same_trees:
            log(f"thresholds: {step_name} trees differ from the recorded ones: ratios only")
        names = set(spec.get("bytes", {})) | set(spec.get("ratios", {}))
        for strategy in sorted(names):
            cell = cells.get(strategy)
            if cell is None:
                continue
            where = f"{step_name} {strategy}"
            if cell.get("status") == "not run":
                continue
            if cell.get("status") != "ok":
                failures.append(f"{where}: {cell.get('status')}: {cell.get('error', '')[:300]}")
                continue
            limit = spec.get("bytes", {}).get(strategy)
            if same_trees and limit is not None and cell["bytes"] > int(limit * (1 + tol)):
                failures.append(f"{where}: {cell['bytes']:,} bytes > limit {limit:,} (+{tol:.0%})")
            ratio = spec.get("ratios", {}).get(strategy)
            base = cells.get(RATIO_BASE) or {}
            if ratio is not None and base.get("status") == "ok" and base["bytes"]:
                got = cell["bytes"] / base["bytes"]
                if got > ratio * (1 + tol):
                    failures.append(
                        f"{where}: {got:.4f} of a full pull > limit {ratio:.4f} (+{tol:.0%})"
                    )
            if strategy in ours and not (cell.get("tree") or {}).get("ok", False):
                failures.append(f"{where}: wrong tree: {short(cell.get('tree'))}")
    return failures


def update_thresholds(doc: dict[str, Any]) -> None:
    limits = json.loads(THRESHOLDS.read_text()) if THRESHOLDS.exists() else {}
    limits.setdefault("tolerance", 0.02)
    limits["comment"] = (
        "Our strategies' byte counts (deterministic). make bench-quick fails when one exceeds "
        "limit * (1 + tolerance): absolute bytes when the step's trees match 'trees' (sha256 "
        "of mmdebstrap's tarballs), else only the ratio to the full gzip pull. Regenerate: "
        "benchmarks/suite.py --profile quick --update-thresholds"
    )
    ours = {s.name for s in strategies() if s.ours}
    table = limits.setdefault("steps", {})
    for series, sdoc in doc["series"].items():
        for sstep in sdoc["steps"]:
            cells = sstep["cells"]
            base = cells.get(RATIO_BASE) or {}
            spec: dict[str, Any] = {
                "trees": _fingerprints(doc, series, sstep["step"]),
                "bytes": {},
                "ratios": {},
            }
            for name, cell in cells.items():
                if name in ours and cell.get("status") == "ok":
                    spec["bytes"][name] = cell["bytes"]
                    if name != RATIO_BASE and base.get("status") == "ok":
                        spec["ratios"][name] = round(cell["bytes"] / base["bytes"], 5)
            table[f"{series} {sstep['step']}"] = spec
    THRESHOLDS.write_text(json.dumps(limits, indent=2, sort_keys=True) + "\n")
    log(f"wrote {THRESHOLDS}")


# --- output ----------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _cell_mb(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    if cell.get("status") == "unavailable":
        return "n/a"
    if cell.get("status") == "not run":
        return "not run"
    if cell.get("status") != "ok":
        return "failed"
    flag = "" if (cell.get("tree") or {}).get("ok") else " ✗"
    return mb(cell["bytes"]) + flag


def summary_table(doc: dict[str, Any]) -> str:
    """Strategies (rows) x steps (columns): MB; ✗ = the tree differs from the target."""
    labels = {s.name: s.label for s in strategies()}
    columns: list[tuple[str, dict[str, Any]]] = []
    for series, sdoc in doc["series"].items():
        for sstep in sdoc["steps"]:
            columns.append((f"{series} {sstep['step']}", sstep["cells"]))
    names = [n for n in labels if any(n in cells for _, cells in columns)]
    rows = [[labels[n], *(_cell_mb(cells.get(n)) for _, cells in columns)] for n in names]
    return markdown_table(["MB on the wire", *(c for c, _ in columns)], rows)


def step_table(cells: dict[str, Any]) -> str:
    labels = {s.name: s.label for s in strategies()}
    rows = []
    for name, label in labels.items():
        c = cells.get(name)
        if c is None:
            continue
        if c.get("status") != "ok":
            rows.append([label, c.get("status", "?"), "", "", "", "", "", c.get("error", "")[:160]])
            continue
        build = c.get("build") or {}
        rows.append(
            [
                label,
                mb(c["bytes"]),
                str(c.get("requests", "—")),
                f"{c['seconds']:.2f}",
                f"{c['maxrss_mib']:.0f}" if c.get("maxrss_mib") is not None else "—",
                short(c.get("tree")),
                f"{build['seconds']:.1f}" if "seconds" in build else "—",
                (f"image {mb(build['bytes'])} MB; " if "bytes" in build else "")
                + str(c.get("note", "")),
            ]
        )
    return markdown_table(
        ["strategy", "MB", "requests", "client s", "peak RSS MiB", "tree ok", "build s", "notes"],
        rows,
    )


def sweep_table(doc: dict[str, Any]) -> str:
    rows = [
        [
            r["series"],
            r["step"],
            "/".join(str(x) for x in r["cdc_kib"]),
            mb(r["update_bytes"]),
            str(r["frames"]),
            mb(r["per_file_cdc_estimate"]),
            mb(r["image_bytes"]),
        ]
        for r in sorted(doc["sweep"], key=lambda r: (r["series"], r["step"], r["cdc_kib"][1]))
    ]
    return markdown_table(
        ["series", "step", "FastCDC min/avg/max KiB", "update MB", "frames",
         "per-file CDC est. MB", "fresh image MB"],
        rows,
    )  # fmt: skip


def render_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    load = doc["load"]
    cells = [
        c
        for sdoc in doc["series"].values()
        for st in sdoc["steps"]
        for c in st["cells"].values()
        if c.get("measured_at")
    ]
    span = ""
    if cells:
        loads = [c["load_before"] for c in cells]
        span = (
            f"Cells measured {min(c['measured_at'] for c in cells)} to "
            f"{max(c['measured_at'] for c in cells)}, 1-min load {min(loads):.1f}-"
            f"{max(loads):.1f} when each started."
        )
    lines = [
        f"# Benchmark suite ({doc['profile']} profile)",
        "",
        span,
        "",
        f"{m['date']}, {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
        f"Python {m['python']}, kernel {m['kernel']}; 1-min load {load[0]:.2f} at the start"
        + (f", {load[1]:.2f} at the end" if len(load) > 1 else " (run in progress)")
        + f". chunkah code {doc.get('code', '?')} (content hash of chunkah/). One run per cell;"
        " times are noisy on this shared machine, byte counts are deterministic.",
        "",
        "Bytes: response bodies logged by the server (registry, nginx, rsync daemon), or the"
        " size of the delta file a client would download (OSTree, xdelta3, zstd). ✗: the"
        " resulting tree differs from the target (details below); n/a: the strategy cannot"
        " run there (reason below).",
        "",
        summary_table(doc),
        "",
    ]
    for series, sdoc in doc["series"].items():
        for sstep in sdoc["steps"]:
            lines += [f"## {series} {sstep['step']}", "", step_table(sstep["cells"]), ""]
            wrong = [
                f"- {n}: {', '.join(c['tree']['first'][:3])}"
                for n, c in sstep["cells"].items()
                if c.get("status") == "ok" and c.get("tree") and not c["tree"]["ok"]
            ]
            if wrong:
                lines += ["Tree differences (first ones):", "", *wrong, ""]
    if doc["sweep"]:
        lines += [
            "## Chunk-size sweep (chunked format, in memory)",
            "",
            "Update bytes a host holding v_k fetches for v_k+1 (TOCs of new layers + every"
            " frame holding a chunk it lacks) for FastCDC settings; other settings at their"
            " defaults.",
            "",
            sweep_table(doc),
            "",
        ]
    if "thresholds" in doc:
        t = doc["thresholds"]
        lines += ["## Regression guard", ""]
        lines += [f"- **FAIL** {f}" for f in t["failures"]] or ["- all byte counts within limits"]
        lines.append("")
    return "\n".join(lines)


def write_outputs(args: argparse.Namespace, doc: dict[str, Any], *, final: bool) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / args.name
    if final:
        doc["load"] = [doc["load"][0], os.getloadavg()[0]]
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(doc))
    if final or args.plot_often:
        import plots

        plots.render(
            doc, RESULTS_DIR / f"{args.name}-bytes.png", RESULTS_DIR / f"{args.name}-chunksizes.png"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--series", help="comma-separated series (default: the profile's)")
    ap.add_argument("--strategies", help="comma-separated strategy names (default: all)")
    ap.add_argument("--fresh", action="store_true", help="ignore stored cells")
    ap.add_argument("--no-sweep", action="store_true", help="skip the chunk-size sweep")
    ap.add_argument("--sweep-only", action="store_true", help="only the chunk-size sweep")
    ap.add_argument(
        "--images-code",
        help="use the images built by this chunkah code state (a hash from an earlier run) "
        "instead of the current one: for re-running client-side strategies",
    )
    ap.add_argument(
        "--stored-only",
        action="store_true",
        help="measure nothing: tables and plots from the stored cells (others: 'not run')",
    )
    ap.add_argument(
        "--keep-peer-cells",
        action="store_true",
        help="keep peers' stored cells measured under another chunkah code state "
        "(ours are re-measured); each cell records the code it ran with",
    )
    ap.add_argument("--update-thresholds", action="store_true")
    ap.add_argument("--check-thresholds", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--plot-often", action="store_true", help="re-plot after every cell")
    ap.add_argument("--name", help="results file stem (default: suite-PROFILE)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=debian.cache_root() / "bench-suite",
        help="workspaces and stored cells",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: Debian series, podman overlay, ostree, tree owners")
    profile = PROFILES[args.profile]
    args.name = args.name or f"suite-{args.profile}"
    doc: dict[str, Any] = {
        "profile": args.profile,
        "machine": machine_info(),
        "load": [os.getloadavg()[0]],
        "series": {},
        "sweep": [],
        "strategies": [
            {"name": s.name, "label": s.label, "ours": s.ours, "wire": s.wire} for s in strategies()
        ],
    }
    t0 = time.perf_counter()
    if not args.sweep_only:
        run_suite(args, profile, doc)
    run_sweep(args, profile, doc)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    failures: list[str] = []
    check = profile.check_thresholds if args.check_thresholds is None else args.check_thresholds
    if args.update_thresholds:
        update_thresholds(doc)
    elif check and THRESHOLDS.exists():
        failures = check_thresholds(doc, json.loads(THRESHOLDS.read_text()))
        doc["thresholds"] = {"failures": failures}
    write_outputs(args, doc, final=True)
    print(render_markdown(doc))
    log(f"suite: {doc['seconds']} s; results in {RESULTS_DIR / args.name}.{{json,md}}")
    for f in failures:
        log(f"REGRESSION: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
