#!/usr/bin/env python3
"""TOC cost: size share, and parse time and memory of a 100 000-entry TOC.

Builds a synthetic layer of N small files (default 100 000, paths shaped like a
distribution's), writes it as a chunked blob, then decodes and validates its TOC
(digest check, decompression, structural validation) several times: median wall
time and peak Python memory (tracemalloc) of one decode, plus the planner's
conversion of it into a layer index.  Writes benchmarks/results/bench_toc.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_json

from chunkah.format.toc import decode_toc_frame
from chunkah.format.writer import write_chunked_layer
from chunkah.host.index import index_from_toc
from chunkah.tree import Entry, EntryType, Tree
from chunkah.tree.model import Content


class _Bytes(Content):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def open(self):  # type: ignore[no-untyped-def]
        return io.BytesIO(self.data)

    def describe(self) -> str:
        return "synthetic"


def synthetic_tree(n: int) -> Tree:
    tree = Tree([Entry(path=b"", type=EntryType.DIR, mode=0o755)])
    dirs = set()
    for i in range(n):
        d = b"usr/share/pkg%04d/sub%02d" % (i // 400, (i // 20) % 20)
        parts = d.split(b"/")
        for k in range(1, len(parts) + 1):
            p = b"/".join(parts[:k])
            if p not in dirs:
                dirs.add(p)
                tree.add(Entry(path=p, type=EntryType.DIR, mode=0o755, mtime=1_700_000_000))
        data = b"file %d\n" % i * (1 + i % 7)
        tree.add(
            Entry(
                path=d + b"/file-%06d.txt" % i,
                type=EntryType.FILE,
                mode=0o644,
                mtime=1_700_000_000,
                size=len(data),
                content=_Bytes(data),
            )
        )
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tree = synthetic_tree(args.entries)
    blob = io.BytesIO()
    layer, _ = write_chunked_layer(tree, blob)
    frame = blob.getvalue()[layer.toc_offset :]
    times, index_times = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        toc = decode_toc_frame(
            frame,
            expected_digest=layer.toc_digest,
            body_size=layer.toc_body_size,
            toc_offset=layer.toc_offset,
        )
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index_from_toc(
            toc, digest=layer.digest, diff_id=layer.diff_id, blob_size=layer.size, media_type="x"
        )
        index_times.append(time.perf_counter() - t0)
    tracemalloc.start()
    toc = decode_toc_frame(frame, expected_digest=layer.toc_digest, body_size=layer.toc_body_size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    info = machine_info()
    rows = [
        [
            f"{len(toc):,}",
            f"{len(toc.chunks):,}",
            f"{layer.toc_length / 1e6:.2f} MB",
            f"{layer.toc_body_size / 1e6:.2f} MB",
            f"{100 * layer.toc_length / layer.size:.2f} %",
            f"{statistics.median(times):.3f} s",
            f"{peak / 2**20:.1f} MiB",
            f"{statistics.median(index_times):.3f} s",
        ]
    ]
    print(f"TOC of {args.entries:,} files, median of {args.runs}; {info['date']}, {info['cpu']}")
    print(
        markdown_table(
            [
                "entries",
                "chunks",
                "TOC frame",
                "TOC body",
                "share of blob",
                "decode+validate",
                "peak memory",
                "to planner index",
            ],
            rows,
        )
    )
    path = write_json(
        "bench_toc",
        {
            "machine": info,
            "entries": len(toc),
            "chunks": len(toc.chunks),
            "toc_frame_bytes": layer.toc_length,
            "toc_body_bytes": layer.toc_body_size,
            "blob_bytes": layer.size,
            "decode_seconds": times,
            "peak_bytes": peak,
            "index_seconds": index_times,
        },
    )
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
