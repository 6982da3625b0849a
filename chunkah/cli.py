"""Command-line interface: argument parsing, --json output, progress; nothing below prints."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chunkah import __version__, cdc
from chunkah.errors import ChunkahError, InputError

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, payload: dict[str, Any], render: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        render()


def _cmd_chunk(args: argparse.Namespace) -> int:
    """Cut files into content-defined chunks and report sizes (a look at the chunker)."""
    files = []
    total_bytes = total_chunks = 0
    started = time.perf_counter()
    for name in args.files:
        path = Path(name)
        try:
            f = path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from exc
        sizes: list[int] = []
        digests: list[str] = []
        with f:
            for _offset, data in cdc.iter_chunks(
                f, min_size=args.min_size, avg_size=args.avg_size, max_size=args.max_size
            ):
                sizes.append(len(data))
                if args.digests:
                    digests.append(hashlib.sha256(data).hexdigest())
        entry: dict[str, Any] = {
            "path": str(path),
            "bytes": sum(sizes),
            "chunks": len(sizes),
            "sizes": sizes,
        }
        if args.digests:
            entry["sha256"] = digests
        files.append(entry)
        total_bytes += sum(sizes)
        total_chunks += len(sizes)
    seconds = time.perf_counter() - started
    payload = {
        "backend": cdc.BACKEND,
        "params": {"min_size": args.min_size, "avg_size": args.avg_size, "max_size": args.max_size},
        "files": files,
        "bytes": total_bytes,
        "chunks": total_chunks,
        "seconds": seconds,
    }

    def render() -> None:
        for entry in files:
            print(f"{entry['path']}: {entry['bytes']} bytes, {entry['chunks']} chunks")
        rate = total_bytes / seconds / 1e6 if seconds else 0.0
        print(
            f"total: {total_bytes} bytes, {total_chunks} chunks, backend {cdc.BACKEND}, {rate:.0f} MB/s"
        )

    _emit(args, payload, render)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chunkah",
        description="Incremental image updates: package-based layers, content-defined chunks, atomic deploys.",
    )
    parser.add_argument("--version", action="version", version=f"chunkah {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chunk = sub.add_parser("chunk", help="cut files into FastCDC chunks and report them")
    chunk.add_argument("files", nargs="+", metavar="FILE")
    chunk.add_argument("--min-size", type=int, default=16 << 10)
    chunk.add_argument("--avg-size", type=int, default=64 << 10)
    chunk.add_argument("--max-size", type=int, default=256 << 10)
    chunk.add_argument("--digests", action="store_true", help="include each chunk's sha256")
    chunk.add_argument("--json", action="store_true", help="one JSON document on stdout")
    chunk.set_defaults(handler=_cmd_chunk)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ChunkahError as exc:
        print(f"chunkah: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # parameter validation from the library (e.g. chunk sizes)
        print(f"chunkah: error: {exc}", file=sys.stderr)
        return InputError.exit_code
    except KeyboardInterrupt:
        print("chunkah: interrupted", file=sys.stderr)
        return 130
