#!/usr/bin/env python3
"""Layer reuse across real updates: single layer, stateless and history-aware packing.

    python benchmarks/bench_layers.py [--series tiny,minbase,numpy] [--modes ...] [--keep DIR]

For each series (benchmarks/series.py) and each mode, builds every version with
``python -m chunkah build DIR -o oci:OUT:TAG --json --compression none`` (with
``SOURCE_DATE_EPOCH`` fixed) and computes coreos/chunkah's ``analyze-layer-reuse``
metric for each update k -> k+1: reuse = bytes of k+1's layers whose digest is among
k's layers / all bytes of k+1's layers; download = the rest.  Beside it, the
file-level ideal: bytes of k+1's regular files whose content (sha256) is not in k
(distinct contents counted once), and download / ideal.  A no-op rebuild (the last
version built again; history-aware modes pass the first build as --previous) must
reuse 100 %.  Build seconds and peak RSS (wait4) per build.

Modes whose flags the CLI does not accept yet (``--max-layers``, ``--previous``:
exit 2, "unrecognized arguments") are reported as not available; without
``--max-layers`` the single-layer mode builds with no flag (the CLI's only shape).
Prints Markdown tables and writes benchmarks/results/bench_layers.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series as series_mod
from common import machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
SOURCE_DATE_EPOCH = "1700000000"
BUILD_TIMEOUT = 1800.0
MB = 1e6
UNCLAIMED = "chunkah/unclaimed"  # the name chunkah build gives the catch-all layer


@dataclass(frozen=True)
class Mode:
    name: str
    max_layers: int
    history: bool

    def flags(self, previous: str | None) -> list[str]:
        flags = ["--max-layers", str(self.max_layers)]
        if self.history and previous:
            flags += ["--previous", previous]
        return flags


MODES = {
    m.name: m
    for m in (
        Mode("single", 1, False),
        Mode("stateless-64", 64, False),
        Mode("stateless-128", 128, False),
        Mode("history-64", 64, True),
        Mode("history-128", 128, True),
    )
}


class Unavailable(Exception):
    """The CLI does not accept a flag this mode needs."""


# --- running chunkah build ----------------------------------------------------------


def build_help() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", "build", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.stdout + proc.stderr


def run_build(source: Path, dest: Path, tag: str, flags: list[str], workers: int) -> dict[str, Any]:
    """One ``chunkah build``: its JSON, wall seconds and peak RSS (bytes)."""
    argv = [
        sys.executable,
        "-m",
        "chunkah",
        "build",
        str(source),
        "-o",
        f"oci:{dest}:{tag}",
        "--json",
        "--quiet",
        "--compression",
        "none",
        "--workers",
        str(workers),
        *flags,
    ]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + BUILD_TIMEOUT
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGKILL)
                os.wait4(proc.pid, 0)
                raise RuntimeError(f"timed out after {BUILD_TIMEOUT:g}s: {' '.join(argv)}")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    code = proc.returncode
    if code == 2 and "unrecognized arguments" in stderr:
        raise Unavailable(stderr.strip().splitlines()[-1])
    if code != 0:
        raise RuntimeError(f"exit status {code}: {' '.join(argv)}\n{stderr[-4000:]}")
    doc = json.loads(stdout)
    return {
        "seconds": round(seconds, 3),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "manifest": doc["manifest"]["digest"],
        "layers": [
            {"digest": layer["digest"], "size": layer["size"], "name": layer.get("name", "")}
            for layer in doc["layers"]
        ],
        "warnings": [line for line in stderr.splitlines() if "warning" in line.lower()][:20],
    }


# --- metrics --------------------------------------------------------------------------


def layer_reuse(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """analyze-layer-reuse for one update: bytes of *new* layers already in *old*."""
    have = {layer["digest"] for layer in old}
    total = sum(layer["size"] for layer in new)
    reused = sum(layer["size"] for layer in new if layer["digest"] in have)
    return {
        "total_bytes": total,
        "reused_bytes": reused,
        "download_bytes": total - reused,
        "reuse": reused / total if total else 1.0,
        "layers": len(new),
        "layers_reused": sum(1 for layer in new if layer["digest"] in have),
    }


def file_digests(root: Path) -> dict[str, tuple[str, int]]:
    """Regular files of a tree: path -> (sha256, size)."""
    files: dict[str, tuple[str, int]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if (st.st_mode & 0o170000) != 0o100000:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            files[os.path.relpath(path, root)] = (h.hexdigest(), st.st_size)
    return files


def file_ideal(old: dict[str, tuple[str, int]], new: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Bytes of *new*'s files the client cannot have: by content, and by (path, content)."""
    old_contents = {digest for digest, _ in old.values()}
    new_contents: dict[str, int] = {}
    by_path = 0
    for path, (digest, size) in new.items():
        if digest not in old_contents:
            new_contents[digest] = size
        if old.get(path, ("", 0))[0] != digest:
            by_path += size
    return {
        "ideal_bytes": sum(new_contents.values()),
        "ideal_path_bytes": by_path,
        "new_files": sum(1 for d, _ in new.values() if d not in old_contents),
    }


def summarize(updates: list[dict[str, Any]]) -> dict[str, Any]:
    if not updates:
        return {}
    reuse = [u["reuse"] for u in updates]
    download = [u["download_bytes"] for u in updates]
    total = sum(u["total_bytes"] for u in updates)
    ideal = sum(u["ideal_bytes"] for u in updates)
    return {
        "updates": len(updates),
        "reuse_mean": statistics.mean(reuse),
        "reuse_min": min(reuse),
        "reuse_max": max(reuse),
        "reuse_total": 1 - sum(download) / total if total else 1.0,
        "download_mean_bytes": statistics.mean(download),
        "download_min_bytes": min(download),
        "download_max_bytes": max(download),
        "download_total_bytes": sum(download),
        "ideal_total_bytes": ideal,
        "download_over_ideal": sum(download) / ideal if ideal else None,
    }


# --- one series, one mode -------------------------------------------------------------


def bench_mode(
    mode: Mode,
    versions: list[series_mod.BuiltVersion],
    digests: list[dict[str, tuple[str, int]]],
    workdir: Path,
    help_text: str,
    workers: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode.name, "max_layers": mode.max_layers}
    needed = ["--max-layers"] + (["--previous"] if mode.history else [])
    missing = [flag for flag in needed if flag not in help_text]
    legacy_single = mode.name == "single" and missing == ["--max-layers"]
    if missing and not legacy_single:
        return {**result, "available": False, "reason": f"chunkah build lacks {', '.join(missing)}"}
    if legacy_single:
        result["note"] = "no --max-layers in the CLI: built with its default (one layer)"

    def flags(previous: str | None) -> list[str]:
        return [] if legacy_single else mode.flags(previous)

    builds: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    try:
        for i, v in enumerate(versions):
            dest = workdir / f"v{i}"
            previous = f"oci:{workdir / f'v{i - 1}'}:v{i - 1}" if i else None
            b = run_build(v.path, dest, f"v{i}", flags(previous), workers)
            builds.append({"label": v.label, **b})
            if i:
                u = layer_reuse(builds[i - 1]["layers"], b["layers"])
                u.update(file_ideal(digests[i - 1], digests[i]))
                u["update"] = f"{versions[i - 1].label} -> {v.label}"
                u["download_over_ideal"] = (
                    u["download_bytes"] / u["ideal_bytes"] if u["ideal_bytes"] else None
                )
                updates.append(u)
                shutil.rmtree(workdir / f"v{i - 2}", ignore_errors=True)
        # No-op: the last version again, against its own first build.
        last = len(versions) - 1
        again = run_build(
            versions[last].path,
            workdir / "noop",
            "noop",
            flags(f"oci:{workdir / f'v{last}'}:v{last}"),
            workers,
        )
        noop = layer_reuse(builds[last]["layers"], again["layers"])
        noop["same_manifest"] = again["manifest"] == builds[last]["manifest"]
        noop["seconds"] = again["seconds"]
    except Unavailable as exc:
        return {**result, "available": False, "reason": str(exc)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        **result,
        "available": True,
        "builds": builds,
        "updates": updates,
        "noop": noop,
        "summary": summarize(updates),
        "build_seconds_mean": statistics.mean(b["seconds"] for b in builds),
        "peak_rss_bytes": max(b["peak_rss_bytes"] for b in builds),
        "layers_max": max(len(b["layers"]) for b in builds),
        "unclaimed_share_max": max(unclaimed_share(b["layers"]) for b in builds),
    }


def unclaimed_share(layers: list[dict[str, Any]]) -> float:
    """Bytes of the layer holding only unclaimed files, over the image (0 when none is named so)."""
    total = sum(layer["size"] for layer in layers)
    unclaimed = sum(layer["size"] for layer in layers if layer["name"] == UNCLAIMED)
    return unclaimed / total if total else 0.0


# --- tables ---------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def summary_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, s in results.items():
        size = s["versions"][-1]["bytes"] / MB
        for m in s["modes"]:
            head = [name, m["mode"]]
            if not m["available"]:
                rows.append([*head, "not available", *["-"] * 10])
                continue
            x = m["summary"]
            ratio = x["download_over_ideal"]
            rows.append(
                [
                    *head,
                    f"{len(s['versions'])} x {size:.0f} MB",
                    f"{pct(x['reuse_mean'])} ({pct(x['reuse_min'])}-{pct(x['reuse_max'])})",
                    f"{x['download_mean_bytes'] / MB:.2f}",
                    f"{x['download_total_bytes'] / MB:.2f}",
                    f"{x['ideal_total_bytes'] / MB:.2f}",
                    f"{ratio:.1f}x" if ratio is not None else "-",
                    pct(m["noop"]["reuse"]),
                    m["layers_max"],
                    pct(m["unclaimed_share_max"]) if m["max_layers"] > 1 else "-",
                    f"{m['build_seconds_mean']:.2f}",
                    f"{m['peak_rss_bytes'] / 2**20:.0f}",
                ]
            )
    return rows


SUMMARY_HEADERS = [
    "series",
    "mode",
    "versions",
    "reuse mean (min-max)",
    "download MB mean",
    "download MB total",
    "ideal MB total",
    "download/ideal",
    "no-op reuse",
    "layers",
    "unclaimed",
    "build s mean",
    "peak RSS MiB",
]


def update_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, s in results.items():
        for m in s["modes"]:
            if not m["available"]:
                continue
            for u in m["updates"]:
                ratio = u["download_over_ideal"]
                rows.append(
                    [
                        name,
                        m["mode"],
                        u["update"],
                        pct(u["reuse"]),
                        f"{u['layers_reused']}/{u['layers']}",
                        f"{u['download_bytes'] / MB:.2f}",
                        f"{u['ideal_bytes'] / MB:.2f}",
                        f"{u['ideal_path_bytes'] / MB:.2f}",
                        f"{ratio:.1f}x" if ratio is not None else "-",
                    ]
                )
    return rows


UPDATE_HEADERS = [
    "series",
    "mode",
    "update",
    "reuse",
    "layers reused",
    "download MB",
    "ideal MB (content)",
    "ideal MB (path)",
    "download/ideal",
]


DEBIAN_IDEAL_LIMIT = 1.3  # issue 4: layer download <= 1.3x the file-level ideal on Debian
UNCLAIMED_LIMIT = 0.02  # issue 4: unclaimed bytes <= 2 % of the image


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on this run's numbers."""
    out: list[dict[str, Any]] = []
    for name, s in results.items():
        avail = {m["mode"]: m for m in s["modes"] if m["available"]}
        debian = isinstance(series_mod.SERIES[name].versions[0], series_mod.DebianVersion)
        for mode, m in avail.items():
            out.append(
                {
                    "check": f"{name}/{mode}: no-op rebuild reuses 100 %",
                    "ok": m["noop"]["reuse"] == 1.0,
                    "value": pct(m["noop"]["reuse"]),
                }
            )
            if debian and m["max_layers"] > 1:
                ratio = m["summary"]["download_over_ideal"]
                out.append(
                    {
                        "check": f"{name}/{mode}: download <= {DEBIAN_IDEAL_LIMIT}x file-level ideal",
                        "ok": ratio is not None and ratio <= DEBIAN_IDEAL_LIMIT,
                        "value": f"{ratio:.2f}x" if ratio is not None else "-",
                    }
                )
                out.append(
                    {
                        "check": f"{name}/{mode}: unclaimed <= {pct(UNCLAIMED_LIMIT)} of the image",
                        "ok": m["unclaimed_share_max"] <= UNCLAIMED_LIMIT,
                        "value": pct(m["unclaimed_share_max"]),
                    }
                )
        for n in (64, 128):
            h, st = avail.get(f"history-{n}"), avail.get(f"stateless-{n}")
            if h and st:
                hd = h["summary"]["download_total_bytes"]
                sd = st["summary"]["download_total_bytes"]
                out.append(
                    {
                        "check": f"{name}: history-{n} downloads no more than stateless-{n}",
                        "ok": hd <= sd,
                        "value": f"{hd / MB:.2f} vs {sd / MB:.2f} MB",
                    }
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="tiny,minbase,numpy", help="comma-separated series names")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="where images are written (default: a temp dir)")
    ap.add_argument("--offline", action="store_true", help="build Debian series from frozen debs")
    args = ap.parse_args()
    names = [n for n in args.series.split(",") if n]
    modes = [MODES[m] for m in args.modes.split(",") if m]
    for n in names:
        if n not in series_mod.SERIES:
            raise SystemExit(f"unknown series {n!r}; known: {', '.join(series_mod.SERIES)}")
    help_text = build_help()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-layers-", dir="/var/tmp"))
    results: dict[str, Any] = {}
    try:
        for name in names:
            built = series_mod.build_series(name, offline=args.offline)
            digests = [file_digests(v.path) for v in built]
            doc = series_mod.describe(name, built)
            modes_out = []
            for mode in modes:
                print(f"bench_layers: {name} / {mode.name} ...", file=sys.stderr, flush=True)
                modes_out.append(
                    bench_mode(
                        mode, built, digests, base / name / mode.name, help_text, args.workers
                    )
                )
            results[name] = {"versions": doc["versions"], "modes": modes_out}
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    info = machine_info()
    print(f"Layer reuse per update (uncompressed layers); {info['date']}, {info['cpu']}\n")
    print(markdown_table(SUMMARY_HEADERS, summary_rows(results)))
    print()
    print(markdown_table(UPDATE_HEADERS, update_rows(results)))
    unavailable = [
        f"{n}/{m['mode']}: {m['reason']}"
        for n, s in results.items()
        for m in s["modes"]
        if not m["available"]
    ]
    if unavailable:
        print("\nnot available: " + "; ".join(unavailable))
    judged = checks(results)
    if judged:
        print()
        rows = [["ok" if c["ok"] else "FAIL", c["check"], c["value"]] for c in judged]
        print(markdown_table(["", "target", "measured"], rows))
    path = write_json("bench_layers", {"machine": info, "series": results, "checks": judged})
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
