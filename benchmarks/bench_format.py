#!/usr/bin/env python3
"""Chunked-format settings: fresh-pull size against update bytes, side by side.

For each series step (v_k -> v_k+1) and each setting (chunk sizes, inline limit,
packed-frame target, zstd level) this builds both versions as packed, chunked
images in memory and reports:

- fresh pull: sum of chunked blobs / sum of `zstd -3` of the same layer tars
  (one stream per layer), and TOC share;
- update: bytes a host holding v_k must fetch for v_k+1 (TOCs of changed layers +
  every frame holding a chunk it lacks), beside the per-file CDC estimate (each
  missing chunk compressed alone, no TOC) that issue 7 measures against.

Prints Markdown tables; writes benchmarks/results/bench_format.json.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_json

from chunkah.format.toc import CdcSettings, Toc
from chunkah.format.writer import ChunkedSettings, write_chunked_layer
from chunkah.owners import assign_components
from chunkah.packing import component_infos, layer_trees, plan_stateless
from chunkah.tree import read_dir, write_tar

REPO = Path(__file__).resolve().parent.parent
EPOCH = 1_700_000_000


@dataclass
class BuiltLayer:
    digest: str
    size: int
    toc_length: int
    toc: Toc
    blob: bytes
    plain_zstd3: int


def series_dirs(name: str) -> list[Path]:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/series.py"), name],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return [Path(line) for line in out.stdout.split()]


def build_image(root: Path, settings: ChunkedSettings, max_layers: int) -> list[BuiltLayer]:
    tree = read_dir(root)
    ownership = assign_components(tree, build_epoch=EPOCH)
    plan = plan_stateless(component_infos(ownership), max_layers)
    out = []
    for lt in layer_trees(plan, tree, ownership, source_date_epoch=EPOCH):
        blob = io.BytesIO()
        layer, toc = write_chunked_layer(lt.tree, blob, settings=settings)
        plain = io.BytesIO()
        write_tar(lt.tree, plain)
        z3 = len(zstandard.ZstdCompressor(level=3).compress(plain.getvalue()))
        out.append(BuiltLayer(layer.digest, layer.size, layer.toc_length, toc, blob.getvalue(), z3))
    return out


def update_bytes(old: list[BuiltLayer], new: list[BuiltLayer]) -> tuple[int, int, int]:
    """(bytes fetched, frames fetched, per-file CDC estimate) for old -> new."""
    have_layers = {layer.digest for layer in old}
    have_chunks: set[bytes] = set()
    have_files: set[bytes] = set()
    for layer in old:
        toc = layer.toc
        have_chunks.update(bytes(c) for c in toc.chunks["sha256"])
        have_files.update(bytes(s) for s in toc.entries["sha256"])
    fetched = frames = estimate = 0
    comp = zstandard.ZstdCompressor(level=3)
    dec = zstandard.ZstdDecompressor()
    for layer in new:
        if layer.digest in have_layers:
            continue
        fetched += layer.toc_length
        toc = layer.toc
        needed: set[int] = set()
        for e in toc.entries:
            if int(e["type"]) != 0 or int(e["size"]) == 0 or bytes(e["sha256"]) in have_files:
                continue
            first, count = int(e["first_chunk"]), int(e["n_chunks"])
            for c in range(first, first + count):
                chunk = toc.chunks[c]
                if bytes(chunk["sha256"]) in have_chunks:
                    continue
                needed.add(int(chunk["frame"]))
                f = toc.frames[int(chunk["frame"])]
                raw = dec.decompress(layer.blob[int(f["coff"]) : int(f["coff"]) + int(f["csize"])])
                start = int(chunk["uoff"]) - int(f["uoff"])
                estimate += len(comp.compress(raw[start : start + int(chunk["usize"])]))
        fetched += sum(int(toc.frames[i]["csize"]) for i in needed)
        frames += len(needed)
    return fetched, frames, estimate


SETTINGS = {
    "default: 16/64/256 inline32K pack192K L16": ChunkedSettings(
        16, CdcSettings(16 << 10, 64 << 10, 256 << 10), 32 << 10, 192 << 10
    ),
    "16/64/256 inline16K pack64K L3": ChunkedSettings(
        3, CdcSettings(16 << 10, 64 << 10, 256 << 10), 16 << 10, 64 << 10
    ),
    "16/64/256 inline64K pack256K L3": ChunkedSettings(
        3, CdcSettings(16 << 10, 64 << 10, 256 << 10), 64 << 10, 256 << 10
    ),
    "32/128/512 inline256K pack2M L3": ChunkedSettings(
        3, CdcSettings(32 << 10, 128 << 10, 512 << 10), 256 << 10, 2 << 20
    ),
    "8/32/128 inline32K pack256K L3": ChunkedSettings(
        3, CdcSettings(8 << 10, 32 << 10, 128 << 10), 32 << 10, 256 << 10
    ),
    "32/128/512 inline128K pack1M L6": ChunkedSettings(
        6, CdcSettings(32 << 10, 128 << 10, 512 << 10), 128 << 10, 1 << 20
    ),
    "16/64/256 inline64K pack512K L9": ChunkedSettings(
        9, CdcSettings(16 << 10, 64 << 10, 256 << 10), 64 << 10, 512 << 10
    ),
    "16/64/256 inline16K pack64K L12": ChunkedSettings(
        12, CdcSettings(16 << 10, 64 << 10, 256 << 10), 16 << 10, 64 << 10
    ),
    "16/64/256 inline16K pack128K L16": ChunkedSettings(
        16, CdcSettings(16 << 10, 64 << 10, 256 << 10), 16 << 10, 128 << 10
    ),
    "16/64/256 inline16K pack128K L19": ChunkedSettings(
        19, CdcSettings(16 << 10, 64 << 10, 256 << 10), 16 << 10, 128 << 10
    ),
    "16/64/256 inline64K pack256K L19": ChunkedSettings(
        19, CdcSettings(16 << 10, 64 << 10, 256 << 10), 64 << 10, 256 << 10
    ),
    "16/64/256 inline32K pack192K L19": ChunkedSettings(
        19, CdcSettings(16 << 10, 64 << 10, 256 << 10), 32 << 10, 192 << 10
    ),
    "16/64/256 inline64K pack256K L16": ChunkedSettings(
        16, CdcSettings(16 << 10, 64 << 10, 256 << 10), 64 << 10, 256 << 10
    ),
    "16/64/256 inline64K pack512K L16": ChunkedSettings(
        16, CdcSettings(16 << 10, 64 << 10, 256 << 10), 64 << 10, 512 << 10
    ),
    "32/128/512 inline64K pack256K L16": ChunkedSettings(
        16, CdcSettings(32 << 10, 128 << 10, 512 << 10), 64 << 10, 256 << 10
    ),
    "32/128/512 inline128K pack512K L16": ChunkedSettings(
        16, CdcSettings(32 << 10, 128 << 10, 512 << 10), 128 << 10, 512 << 10
    ),
    "32/128/512 inline64K pack512K L16": ChunkedSettings(
        16, CdcSettings(32 << 10, 128 << 10, 512 << 10), 64 << 10, 512 << 10
    ),
    "32/128/512 inline128K pack512K L19": ChunkedSettings(
        19, CdcSettings(32 << 10, 128 << 10, 512 << 10), 128 << 10, 512 << 10
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", default="tiny", help="a series from benchmarks/series.py")
    ap.add_argument("--settings", nargs="*", help="names of settings to run (default: all)")
    ap.add_argument("--max-layers", type=int, default=64)
    args = ap.parse_args()
    dirs = series_dirs(args.series)
    chosen = {k: v for k, v in SETTINGS.items() if not args.settings or k in args.settings}
    rows, results = [], []
    for name, settings in chosen.items():
        t0 = time.perf_counter()
        images = [build_image(d, settings, args.max_layers) for d in dirs]
        seconds = time.perf_counter() - t0
        blob = sum(layer.size for layer in images[-1])
        z3 = sum(layer.plain_zstd3 for layer in images[-1])
        toc = sum(layer.toc_length for layer in images[-1])
        for k in range(len(images) - 1):
            fetched, frames, estimate = update_bytes(images[k], images[k + 1])
            rows.append(
                [
                    name,
                    f"v{k + 1}->v{k + 2}",
                    f"{blob / z3:.3f}x",
                    f"{100 * toc / blob:.2f} %",
                    f"{fetched / 1e6:.2f}",
                    str(frames),
                    f"{estimate / 1e6:.2f}",
                    f"{fetched / estimate:.2f}x",
                ]
            )
            results.append(
                {
                    "settings": name,
                    "step": k + 1,
                    "blob_bytes": blob,
                    "zstd3_bytes": z3,
                    "toc_bytes": toc,
                    "update_bytes": fetched,
                    "frames": frames,
                    "per_file_cdc_estimate": estimate,
                    "build_seconds": seconds,
                }
            )
        print(f"  done {name}", file=sys.stderr)
    info = machine_info()
    print(
        f"Chunked format settings on the {args.series} series ({args.max_layers} layers); {info['date']}, {info['cpu']}"
    )
    print(
        markdown_table(
            [
                "settings",
                "update",
                "fresh / zstd-3",
                "TOC share",
                "update MB",
                "frames",
                "per-file CDC est. MB",
                "update / est.",
            ],
            rows,
        )
    )
    path = write_json(
        f"bench_format_{args.series}", {"machine": info, "series": args.series, "results": results}
    )
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
