#!/usr/bin/env python3
"""Conversion (a mirror's job) and fresh-pull sizes, side by side in one run.

For each series image (default: the last version of `tiny` and of `app`):

- fresh-pull size of `chunkah build` (default settings: packed layers, chunked zstd)
  against the same layer tars compressed with `zstd -3` one stream per layer (the
  issue's baseline), a single-layer `gzip -6` image, and skopeo's `zstd:chunked`
  conversion of that gzip image; TOC bytes as a share of the blobs;
- conversion throughput: `chunkah build oci:IN -o oci:OUT --level 3` where IN is the
  single-layer gzip image (as an upstream registry would hold it), with 1 and 2
  workers, in MB/s of uncompressed input (median of --runs).

Prints Markdown tables; writes benchmarks/results/bench_convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
EPOCH = "1700000000"


def series_last(name: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/series.py"), name],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return Path(out.stdout.split()[-1])


def chunkah(*args: str) -> dict:
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    proc = subprocess.run(
        [sys.executable, "-m", "chunkah", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"chunkah {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def layer_tar_zstd3(layout: Path, tag: str) -> tuple[int, int]:
    """(bytes of zstd -3 over each layer's uncompressed tar, uncompressed bytes)."""
    from chunkah import oci

    image = oci.resolve_image(f"oci:{layout}:{tag}")
    total = plain = 0
    for i in range(len(image.layers)):
        with image.open_layer(i) as f:
            proc = subprocess.Popen(
                ["zstd", "-3", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert proc.stdin is not None and proc.stdout is not None
            import threading

            sizes = [0]

            def drain(out=proc.stdout, sizes=sizes) -> None:
                while block := out.read(1 << 20):
                    sizes[0] += len(block)

            t = threading.Thread(target=drain)
            t.start()
            while block := f.read(1 << 20):
                plain += len(block)
                proc.stdin.write(block)
            proc.stdin.close()
            t.join()
            proc.wait()
            total += sizes[0]
    return total, plain


def zstd_cli_speed(layout: Path, tag: str, tmp: Path, runs: int) -> dict[int, float]:
    """MB/s of the zstd CLI alone at level 3 over the image's uncompressed tar, 1 and 2
    threads: what compression by itself allows on this machine (the conversion's ceiling)."""
    from chunkah import oci

    image = oci.resolve_image(f"oci:{layout}:{tag}")
    tar = tmp / "plain.tar"
    with tar.open("wb") as out:
        for i in range(len(image.layers)):
            with image.open_layer(i) as f:
                shutil.copyfileobj(f, out, 1 << 20)
    size = tar.stat().st_size
    speeds = {}
    for threads in (1, 2):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(
                ["zstd", "-3", f"-T{threads}", "-q", "-c", str(tar)],
                stdout=subprocess.DEVNULL,
                check=True,
                timeout=600,
            )
            times.append(time.perf_counter() - t0)
        speeds[threads] = size / statistics.median(times) / 1e6
    tar.unlink()
    return speeds


def blob_sizes(layout: Path, tag: str) -> tuple[int, int]:
    from chunkah import oci

    image = oci.resolve_image(f"oci:{layout}:{tag}")
    toc = 0
    for d in image.layers:
        pos = d.annotations.get("org.chunkah.toc.v1.position")
        if pos:
            toc += int(pos.split(":")[1])
    return sum(d.size for d in image.layers), toc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", default="tiny,app")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size_rows, speed_rows, results = [], [], []
    for name in args.series.split(","):
        root = series_last(name)
        with tempfile.TemporaryDirectory(
            prefix="bench-convert-", dir=REPO / "benchmarks/results"
        ) as tmp_name:
            tmp = Path(tmp_name)
            chunkah("build", str(root), "-o", f"oci:{tmp}/ours:x")
            ours_bytes, toc_bytes = blob_sizes(tmp / "ours", "x")
            z3, plain = layer_tar_zstd3(tmp / "ours", "x")
            chunkah(
                "build",
                str(root),
                "-o",
                f"oci:{tmp}/gz:x",
                "--max-layers",
                "1",
                "--compression",
                "gzip",
                "--level",
                "6",
            )
            gz_bytes, _ = blob_sizes(tmp / "gz", "x")
            Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb").unlink(missing_ok=True)
            zc = subprocess.run(
                [
                    "skopeo",
                    "--insecure-policy",
                    "copy",
                    "--dest-compress-format",
                    "zstd:chunked",
                    f"oci:{tmp}/gz:x",
                    f"oci:{tmp}/zc:x",
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            zc_bytes = blob_sizes(tmp / "zc", "x")[0] if zc.returncode == 0 else None
            size_rows.append(
                [
                    name,
                    f"{plain / 1e6:.1f}",
                    f"{ours_bytes / 1e6:.2f}",
                    f"{z3 / 1e6:.2f}",
                    f"{ours_bytes / z3:.3f}x",
                    f"{100 * toc_bytes / ours_bytes:.2f} %",
                    f"{gz_bytes / 1e6:.2f}",
                    f"{zc_bytes / 1e6:.2f}" if zc_bytes else "failed: " + zc.stderr[-80:],
                ]
            )
            speeds = {}
            for workers in (1, 2):
                times = []
                for i in range(args.runs):
                    out = tmp / f"conv{workers}-{i}"
                    t0 = time.perf_counter()
                    chunkah(
                        "build",
                        f"oci:{tmp}/gz:x",
                        "-o",
                        f"oci:{out}:x",
                        "--level",
                        "3",
                        "--workers",
                        str(workers),
                    )
                    times.append(time.perf_counter() - t0)
                    shutil.rmtree(out)
                speeds[workers] = plain / statistics.median(times) / 1e6
            ceiling = zstd_cli_speed(tmp / "gz", "x", tmp, args.runs)
            speed_rows.append(
                [
                    name,
                    f"{plain / 1e6:.1f}",
                    f"{speeds[1]:.0f}",
                    f"{speeds[2]:.0f}",
                    f"{speeds[2] / speeds[1]:.2f}x",
                    f"{ceiling[1]:.0f}",
                    f"{ceiling[2]:.0f}",
                ]
            )
            results.append(
                {
                    "series": name,
                    "uncompressed": plain,
                    "chunkah": ours_bytes,
                    "toc": toc_bytes,
                    "zstd3_per_layer": z3,
                    "gzip6_single": gz_bytes,
                    "zstd_chunked_single": zc_bytes,
                    "convert_mb_s": speeds,
                    "zstd3_cli_mb_s": ceiling,
                }
            )
        print(f"  done {name}", file=sys.stderr)
    info = machine_info()
    print(f"Fresh-pull sizes (MB); {info['date']}, {info['cpu']}")
    print(
        markdown_table(
            [
                "image",
                "uncompressed",
                "chunkah (default)",
                "zstd -3 per layer",
                "ratio",
                "TOC share",
                "gzip -6 (1 layer)",
                "skopeo zstd:chunked (1 layer)",
            ],
            size_rows,
        )
    )
    print(f"\nConversion oci:IN (gzip, 1 layer) -> chunked, zstd level 3, median of {args.runs}")
    print(
        markdown_table(
            [
                "image",
                "input MB",
                "1 worker MB/s",
                "2 workers MB/s",
                "speed-up",
                "zstd -3 -T1 alone MB/s",
                "zstd -3 -T2 alone MB/s",
            ],
            speed_rows,
        )
    )
    path = write_json("bench_convert", {"machine": info, "results": results})
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
