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


def _progress_printer(args: argparse.Namespace) -> Callable[[str], None]:
    if args.json or args.quiet:
        return lambda _msg: None
    return lambda msg: print(f"chunkah: {msg}", file=sys.stderr)


def _cmd_build(args: argparse.Namespace) -> int:
    from chunkah import build, oci

    options = build.BuildOptions(
        tag=args.tag,
        compression=args.compression,
        level=args.level,
        workers=args.workers,
        labels=oci.parse_label_edits(args.label),
        annotations=oci.parse_annotations(args.annotation),
        arch=args.arch,
        sbom=args.sbom,
        base_config=Path(args.config) if args.config else None,
        prune=args.prune,
        skip_special_files=args.skip_special_files,
        include_special_files=args.include_special_files,
        max_layers=args.max_layers,
        previous=args.previous,
        plain_http=args.plain_http,
        tls_verify=args.tls_verify,
    )
    result = build.build(args.source, args.output, options, progress=_progress_printer(args))
    payload = result.to_json()

    def render() -> None:
        print(f"{result.destination}: manifest {result.manifest.digest}")
        for layer in result.layers:
            print(
                f"  {layer.name}: {layer.descriptor.digest} {layer.descriptor.size} bytes "
                f"({layer.digests.uncompressed_size} uncompressed, {layer.entries} entries)"
            )
        print(f"built in {result.seconds:.2f} s")

    _emit(args, payload, render)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from chunkah import oci

    info = oci.inspect_image(args.ref)

    def render() -> None:
        print(f"{info['reference']}")
        print(f"  digest:   {info['digest']} ({info['mediaType']})")
        print(f"  platform: {info['platform']}   created: {info['created']}")
        for key, value in sorted((info.get("labels") or {}).items()):
            print(f"  label:    {key}={value}")
        print(f"  layers:   {len(info['layers'])}, {info['layersSize']} bytes")
        for layer in info["layers"]:
            print(f"    {layer['digest']} {layer['size']:>12} {layer['mediaType']}")

    _emit(args, info, render)
    return 0


def _cmd_sbom(args: argparse.Namespace) -> int:
    """CycloneDX JSON of SOURCE's packages; timestamp from SOURCE_DATE_EPOCH, else the
    image's creation time, else now (docs/sbom.md)."""
    from chunkah import build, oci, sbom

    epoch = oci.source_date_epoch()
    with build.open_source(args.source, build.BuildOptions(skip_special_files=True)) as src:
        if epoch is None:
            epoch = sbom.created_epoch(src.config.created if src.config else None)
        document = sbom.tree_sbom(src.tree, source_description=args.source, build_epoch=epoch)
    if args.output:
        try:
            Path(args.output).write_bytes(document)
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror}") from exc
    else:
        sys.stdout.buffer.write(document)
        sys.stdout.flush()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the embedded OCI registry until interrupted."""
    import logging

    from chunkah.registry.server import serve

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InputError(f"--listen {args.listen!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    root = Path(args.dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (create it first; repositories appear on push)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    def ready(bound_host: str, bound_port: int) -> None:
        print(
            f"chunkah: serving {root} at http://{bound_host}:{bound_port}/v2/",
            file=sys.stderr,
            flush=True,
        )

    serve(root, host.strip("[]"), int(port), ready=ready)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def _update_options(args: argparse.Namespace) -> Any:
    from chunkah.host.update import UpdateOptions

    return UpdateOptions(
        plain_http=args.plain_http,
        tls_verify=args.tls_verify,
        verify_diff_ids=not args.no_verify_diff_ids,
        deltas=not args.no_deltas,
    )


_DELTA_LINES = 20


def _render_plan(summary: dict[str, Any]) -> None:
    files = summary.get("files", {})
    print(
        f"  files: {files.get('link', 0)} hardlinked, {files.get('copy', 0)} copied locally, "
        f"{files.get('build', 0)} assembled from chunks, {files.get('delta', 0)} by delta, "
        f"{files.get('empty', 0)} empty"
    )
    by_delta = summary.get("delta_files") or []
    if by_delta:
        deltas = summary.get("deltas") or {}
        print(
            f"  by delta ({_human(summary.get('delta_bytes', 0))} in {summary.get('delta_ranges', 0)} "
            f"ranges, index {_human(deltas.get('index_bytes', 0))}):"
        )
        for row in by_delta[:_DELTA_LINES]:
            base = f" (from {row['base']})" if row["base"] != row["path"] else ""
            print(
                f"    {row['path']}: {_human(row['delta_bytes'])} for {_human(row['size'])}{base}"
            )
        if len(by_delta) > _DELTA_LINES:
            print(f"    ... and {len(by_delta) - _DELTA_LINES} more (--json lists every file)")
    elif (summary.get("deltas") or {}).get("error"):
        print(f"  deltas: none used ({summary['deltas']['error']})")
    chunks = summary.get("chunks", {})
    chunk_bytes = summary.get("chunk_bytes", {})
    for source in ("cache", "local", "fetch"):
        if chunks.get(source):
            print(
                f"  chunks from {source}: {chunks[source]} ({_human(chunk_bytes.get(source, 0))} uncompressed)"
            )
    print(
        f"  to download: {_human(summary['expected_bytes'])} "
        f"(TOCs {_human(summary['toc_bytes'])}, {summary['ranges']} ranges {_human(summary['fetch_bytes'])}, "
        f"deltas {_human(summary.get('delta_bytes', 0))}, "
        f"whole layers {_human(summary['whole_layer_bytes'])}); a full pull is {_human(summary['full_pull_bytes'])}"
    )
    changed = [row for row in summary.get("layers", []) if not row.get("unchanged")]
    for row in changed:
        comps = ", ".join(row.get("components") or []) or row["digest"][:19]
        print(f"    {comps}: {_human(row.get('fetch_bytes', 0) + row.get('toc_bytes', 0))}")


def _open_host_store(path: str, *, create: bool) -> Any:
    from chunkah.host.store import HostStore
    from chunkah.host.sysroot import Sysroot

    sysroot = Sysroot.init(path) if create else Sysroot.open(path)
    return HostStore(sysroot)


def _cmd_plan(args: argparse.Namespace) -> int:
    from chunkah.host.update import run_plan

    store = _open_host_store(args.sysroot, create=True)
    with store.sysroot.lock(wait=args.wait):
        result = run_plan(args.ref, store, _update_options(args))

    def render() -> None:
        state = " (already deployed)" if result.unchanged else ""
        print(f"{args.ref} -> {result.digest}{state}")
        _render_plan(result.plan)

    _emit(args, result.to_json(), render)
    return 0


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 to 86400 seconds")
    return value


def _cmd_update(args: argparse.Namespace) -> int:
    from chunkah.host.update import run_update

    if args.jitter:
        from chunkah.registry.retry import start_delay

        # A fleet triggered at once spreads its start over the window (docs/scale.md).
        delay = start_delay(args.jitter)
        if not args.quiet and not args.json:
            print(f"waiting {delay:.1f} s before starting (--jitter)", file=sys.stderr)
        time.sleep(delay)
    store = _open_host_store(args.sysroot, create=True)
    bar = None
    progress = None
    if not args.json and not args.quiet and sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
        )  # fmt: skip
        task = bar.add_task("fetching", total=None)

        def progress(_phase: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

    with store.sysroot.lock(wait=args.wait):
        if bar is not None:
            with bar:
                result = run_update(args.ref, store, _update_options(args), progress=progress)
        else:
            result = run_update(args.ref, store, _update_options(args))

    def render() -> None:
        if result.unchanged:
            print(
                f"{args.ref} ({result.digest}) is already deployed; nothing fetched beyond the manifest and TOCs"
            )
            return
        print(f"deployed {result.deployed}: {args.ref} ({result.digest})")
        _render_plan(result.plan)
        print(
            f"  fetched {_human(result.fetched_bytes)} in {result.requests} requests, "
            f"{result.seconds:.2f} s"
        )

    _emit(args, result.to_json(), render)
    return 0


def _cmd_delta(args: argparse.Namespace) -> int:
    """Compute the per-file deltas FROM -> TO and publish them as an OCI artifact."""
    from chunkah.delta.make import make_delta_artifact

    say = _progress_printer(args)
    say(f"computing deltas {args.source} -> {args.target}")
    result = make_delta_artifact(
        args.source, args.target, args.output, workers=args.workers, level=args.level,
        plain_http=args.plain_http, tls_verify=args.tls_verify,
    )  # fmt: skip

    def render() -> None:
        s = result.stats
        print(f"{result.destination}: delta artifact {result.artifact} ({result.discoverable_by})")
        print(
            f"  {s['kept']} files by delta ({_human(s['delta_bytes'])} for "
            f"{_human(s['chunk_bytes_replaced'])} of chunks), {s['dropped']} dropped, "
            f"{s['pairs']} paired {s['paired_by']}, index {_human(result.index_bytes)}, "
            f"{s['seconds']:.1f} s"
        )

    _emit(args, result.to_json(), render)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from chunkah.host.deploy import rollback
    from chunkah.host.sysroot import Sysroot

    sysroot = Sysroot.open(args.sysroot)
    dep = rollback(sysroot, wait=args.wait)
    _emit(args, dep.to_json(), lambda: print(f"rolled back: current is {dep.id} ({dep.image_ref})"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from chunkah.host.sysroot import Sysroot, status

    info = status(Sysroot.open(args.sysroot))

    def render() -> None:
        for key in ("current", "previous"):
            dep = info.get(key)
            if dep:
                print(f"{key}: {dep.get('id')} {dep.get('image_ref')} {dep.get('manifest_digest')}")
            else:
                print(f"{key}: none")
        for c in info.get("etc_conflicts", []) or []:
            print(f"/etc conflict: {c}")
        if info.get("update_running") or info.get("lock"):
            print(f"update running: {info.get('lock') or info.get('update_running')}")

    _emit(args, info, render)
    return 0


def _tls_flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError("expected true or false")


def _add_registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="talk HTTP, not HTTPS, to docker:// registries (loopback)",
    )
    p.add_argument(
        "--tls-verify",
        type=_tls_flag,
        default=True,
        metavar="BOOL",
        help="verify TLS certificates (false also allows plain HTTP, as skopeo)",
    )


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

    b = sub.add_parser("build", help="build an image from a rootfs directory or an existing image")
    b.add_argument(
        "source",
        metavar="SOURCE",
        help="DIR, oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REF",
    )
    b.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DEST",
        help="oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REF (pushed)",
    )
    b.add_argument("--tag", help="tag to record in index.json (overrides DEST's :TAG)")
    b.add_argument(
        "--max-layers",
        type=int,
        default=64,
        metavar="N",
        help="at most N layers, one or more components each (1: a single layer; default 64)",
    )
    b.add_argument(
        "--previous",
        metavar="REF",
        help="keep the layer plan of this earlier image (history-aware packing)",
    )
    b.add_argument(
        "--compression",
        choices=["chunked", "zstd", "gzip", "none"],
        default="chunked",
        help="layer format: chunked (tar+zstd with a chunk TOC for range updates, default), "
        "plain zstd, gzip, or uncompressed",
    )
    b.add_argument("--level", type=int, help="compression level")
    b.add_argument(
        "--workers",
        type=int,
        default=2,
        help="threads for layers/compression (output is identical)",
    )
    b.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V|K-",
        help="set or remove a config label",
    )
    b.add_argument(
        "--annotation", action="append", default=[], metavar="K=V", help="manifest annotation"
    )
    b.add_argument("--arch", help="architecture (aliases such as x86_64, aarch64 accepted)")
    b.add_argument(
        "--config", metavar="FILE", help="base config: OCI config or podman/docker inspect JSON"
    )
    b.add_argument(
        "--prune",
        action="append",
        default=[],
        metavar="/P[/]",
        help="drop /P and below (or only what is below /P/)",
    )
    special = b.add_mutually_exclusive_group()
    special.add_argument(
        "--skip-special-files", action="store_true", help="leave out devices and fifos"
    )
    special.add_argument(
        "--include-special-files",
        action="store_true",
        help="archive devices and fifos (default: error)",
    )
    b.add_argument(
        "--sbom",
        action="store_true",
        help="attach a CycloneDX SBOM to the image (an OCI referrer, see docs/sbom.md)",
    )
    _add_registry_options(b)
    b.add_argument("--json", action="store_true", help="one JSON document on stdout")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(handler=_cmd_build)

    ins = sub.add_parser("inspect", help="show an image's manifest, config and layers")
    ins.add_argument("ref", metavar="REF", help="oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    ins.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ins.set_defaults(handler=_cmd_inspect)

    sv = sub.add_parser("serve", help="serve a directory of OCI layouts as an OCI registry")
    sv.add_argument("dir", metavar="DIR", help="one OCI layout per repository: DIR/<repo>/")
    sv.add_argument("--listen", default="127.0.0.1:5000", metavar="HOST:PORT")
    sv.add_argument("-q", "--quiet", action="store_true", help="no access log")
    sv.set_defaults(handler=_cmd_serve)

    for name, handler, text in (
        (
            "plan",
            _cmd_plan,
            "show what updating to REF would fetch, per layer, without fetching it",
        ),
        ("update", _cmd_update, "fetch what is missing of REF, verify it and deploy it atomically"),
    ):
        hp = sub.add_parser(name, help=text)
        hp.add_argument("ref", metavar="REF", help="docker://HOST/REPO[:TAG|@DIGEST]")
        hp.add_argument(
            "--sysroot",
            required=True,
            metavar="DIR",
            help="the host's sysroot (created if missing)",
        )
        hp.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="wait this long for another update to finish",
        )
        hp.add_argument(
            "--no-verify-diff-ids", action="store_true",
            help="skip regenerating each changed layer's tar to check its diff_id (saves one read)",
        )  # fmt: skip
        hp.add_argument(
            "--no-deltas", action="store_true",
            help="do not look for per-file deltas (docs/delta.md); chunks only",
        )  # fmt: skip
        if name == "update":
            hp.add_argument(
                "--jitter", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                help="wait a random time in [0, SECONDS] first, so a fleet updating at once "
                "does not hit the registry in the same second (default 0)",
            )  # fmt: skip
        _add_registry_options(hp)
        hp.add_argument("--json", action="store_true", help="one JSON document on stdout")
        hp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        hp.set_defaults(handler=handler)
    dl = sub.add_parser(
        "delta", help="compute per-file deltas FROM -> TO and publish them as an OCI artifact"
    )
    dl.add_argument("source", metavar="FROM", help="oci:DIR[:TAG] or docker://REF (chunkah-built)")
    dl.add_argument("target", metavar="TO", help="oci:DIR[:TAG] or docker://REF (chunkah-built)")
    dl.add_argument(
        "-o", "--output", required=True, metavar="DEST",
        help="docker://HOST/REPO (TO's repository) or oci:DIR (e.g. a chunkah serve directory)",
    )  # fmt: skip
    dl.add_argument("--workers", type=int, help="processes encoding deltas (default: 2)")
    dl.add_argument("--level", type=int, default=19, help="zstd level of the deltas (default 19)")
    _add_registry_options(dl)
    dl.add_argument("--json", action="store_true", help="one JSON document on stdout")
    dl.add_argument("-q", "--quiet", action="store_true")
    dl.set_defaults(handler=_cmd_delta)

    rb = sub.add_parser("rollback", help="switch back to the previous deployment")
    rb.add_argument("--sysroot", required=True, metavar="DIR")
    rb.add_argument("--wait", type=float, metavar="SECONDS")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(handler=_cmd_rollback)
    st = sub.add_parser("status", help="current and previous deployments, /etc conflicts, disk use")
    st.add_argument("--sysroot", required=True, metavar="DIR")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=_cmd_status)

    sb = sub.add_parser("sbom", help="write a CycloneDX SBOM of a rootfs or an image")
    sb.add_argument("source", metavar="SOURCE", help="DIR, oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    sb.add_argument("--format", choices=["cyclonedx"], default="cyclonedx", help="SBOM format")
    sb.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    sb.set_defaults(handler=_cmd_sbom)
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
