#!/usr/bin/env python3
"""Build speed and memory: `chunkah build` beside `tar --sort=name -cf - | sha256sum`.

Builds a single-layer uncompressed image from a real Debian rootfs (the "large"
recipe, 450+ MB, made with mmdebstrap and cached; or any directory given with
--rootfs) and times the tar pipeline on the same tree, alternating runs with a warm
page cache.  Peak RSS of each build is read with wait4().  Prints a Markdown table
and writes benchmarks/results/bench_build.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent


def rootfs_for(recipe: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "fixtures/debian_rootfs.py"), recipe],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def tree_bytes(root: Path) -> tuple[int, int]:
    total = count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            count += 1
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size if not os.path.isdir(os.path.join(dirpath, name)) else 0
    return total, count


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command (the largest process for a pipeline)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed with status {status}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--recipe", default="large", help="Debian recipe from fixtures/debian_rootfs.py"
    )
    ap.add_argument("--rootfs", type=Path, help="use this directory instead of a recipe")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--max-layers", type=int, default=1, help="1: a single layer (issue 3); 64: packed"
    )
    args = ap.parse_args()
    root = args.rootfs or rootfs_for(args.recipe)
    size, entries = tree_bytes(root)
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    tar_cmd = ["bash", "-c", f"tar --sort=name -cf - -C '{root}' . | sha256sum"]
    times: dict[str, list[float]] = {"tar | sha256sum": [], "chunkah build": []}
    rss: list[int] = []
    with tempfile.TemporaryDirectory(
        prefix="bench-build-", dir=REPO / "benchmarks" / "results"
    ) as tmp:

        def build(i: int) -> tuple[float, int]:
            out = Path(tmp, f"img{i}")
            res = timed(
                [
                    sys.executable,
                    "-m",
                    "chunkah",
                    "build",
                    str(root),
                    "-o",
                    f"oci:{out}:b",
                    "--compression",
                    "none",
                    "--workers",
                    str(args.workers),
                    "--quiet",
                ],
                env,
            )
            subprocess.run(["rm", "-rf", str(out)], check=True)
            return res

        timed(tar_cmd)  # warm the page cache
        build(-1)
        for i in range(args.runs):
            times["tar | sha256sum"].append(timed(tar_cmd)[0])
            seconds, peak = build(i)
            times["chunkah build"].append(seconds)
            rss.append(peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["chunkah build"] / med["tar | sha256sum"]
    info = machine_info()
    rows = [
        ["tar --sort=name -cf - | sha256sum", f"{med['tar | sha256sum']:.2f}", "1.00x", "-"],
        [
            f"chunkah build (uncompressed, {args.workers} worker)",
            f"{med['chunkah build']:.2f}",
            f"{ratio:.2f}x",
            f"{max(rss) / 2**20:.0f} MiB",
        ],
    ]
    print(
        f"Single-layer build of {root} ({size / 1e6:.0f} MB in {entries} entries), "
        f"median of {args.runs}; {info['date']}, {info['cpu']}"
    )
    print(markdown_table(["command", "seconds", "vs tar", "peak RSS"], rows))
    path = write_json(
        "bench_build",
        {
            "machine": info,
            "rootfs": str(root),
            "bytes": size,
            "entries": entries,
            "runs": args.runs,
            "seconds": times,
            "median": med,
            "ratio": ratio,
            "peak_rss_bytes": max(rss),
        },
    )
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
