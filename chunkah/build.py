"""The build pipeline: source -> tree -> layers -> OCI image.

I/O lives at the two ends (reading the source, writing blobs); the middle is the
tree model and the layer plan.  Layers are written in parallel by worker threads
(compression releases the GIL) and assembled in plan order, so the output is the
same whatever the thread count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from chunkah.registry.client import RegistryClient

from chunkah import oci
from chunkah.compression import BlobDigests, CompressingWriter, Compression
from chunkah.errors import InputError
from chunkah.format.writer import ChunkedSettings, write_chunked_layer
from chunkah.oci import Descriptor, ImageConfig, LayerHistory, OciLayout
from chunkah.owners import assign_components
from chunkah.packing import (
    DEFAULT_MAX_LAYERS,
    LayerPlan,
    component_infos,
    layer_trees,
    plan_history,
    plan_stateless,
    previous_plan,
)
from chunkah.readahead import read_ahead
from chunkah.tree import Tree, flatten_layers, parse_prune, read_dir, write_tar
from chunkah.tree.model import is_below

ANNOTATION_LAYER_CONTENT = "org.chunkah.layer.content"


@dataclass(frozen=True)
class BuildOptions:
    """Everything `chunkah build` takes besides source and destination."""

    tag: str | None = None
    compression: str = "chunked"  # chunked (zstd frames + TOC), zstd, gzip or none
    level: int | None = None
    workers: int = 1
    labels: Sequence[tuple[str, str | None]] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    arch: str | None = None
    base_config: Path | None = None
    prune: Sequence[str] = ()
    sbom: bool = False  # attach a CycloneDX SBOM as an OCI referrer (docs/sbom.md)
    skip_special_files: bool = False
    include_special_files: bool = False
    mtime_clamp: int | None = None  # default: SOURCE_DATE_EPOCH when set
    max_layers: int = DEFAULT_MAX_LAYERS
    plain_http: bool = False  # for docker:// sources and destinations on loopback
    tls_verify: bool = True
    previous: str | None = None  # history-aware packing against this image


@dataclass(frozen=True)
class LayerSpec:
    """One layer to write: its tree and what the manifest and config say about it."""

    tree: Tree
    name: str
    mtime_clamp: int | None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltLayer:
    descriptor: Descriptor
    digests: BlobDigests
    name: str
    entries: int


@dataclass(frozen=True)
class BuildResult:
    destination: str
    manifest: Descriptor
    layers: tuple[BuiltLayer, ...]
    seconds: float
    sbom: Descriptor | None = None  # the SBOM artifact manifest, with --sbom

    def to_json(self) -> dict[str, object]:
        sbom = {"sbom": {"digest": self.sbom.digest, "size": self.sbom.size}} if self.sbom else {}
        return sbom | {
            "destination": self.destination,
            "manifest": {"digest": self.manifest.digest, "size": self.manifest.size},
            "layers": [
                {
                    "name": layer.name,
                    "digest": layer.descriptor.digest,
                    "mediaType": layer.descriptor.media_type,
                    "size": layer.descriptor.size,
                    "diffId": layer.digests.diff_id,
                    "uncompressedSize": layer.digests.uncompressed_size,
                    "entries": layer.entries,
                }
                for layer in self.layers
            ],
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[str], None]


def _no_progress(_: str) -> None:
    pass


@dataclass
class SourceImage:
    """A source read into a tree, plus the config it came with (for images)."""

    tree: Tree
    config: ImageConfig | None
    description: str


def _drained_layers(image: oci.ResolvedImage) -> Iterator[BinaryIO]:
    """Each layer as a tar stream; read to the end so its digests are checked."""
    for i in range(len(image.layers)):
        # Reading, digests and decompression run ahead in a thread (they release the
        # GIL) while the tar parser, pure Python, consumes: two cores instead of one.
        with image.open_layer(i) as stream, read_ahead(stream) as ahead:
            yield ahead
            while ahead.read(1 << 20):
                pass


@contextlib.contextmanager
def open_source(source: str, options: BuildOptions) -> Iterator[SourceImage]:
    """Read SOURCE (a rootfs directory, oci:DIR[:TAG] or oci-archive:FILE[:TAG]).

    Layers of an image are flattened (whiteouts applied) with their file contents
    spooled to a temporary directory that lives as long as the context.
    """
    ref = oci.parse_reference(source)
    if ref.transport == "rootfs":
        assert ref.path is not None
        if not ref.path.is_dir():
            raise InputError(f"{source}: not a directory (and not oci:, oci-archive: or docker://)")
        tree = read_dir(
            ref.path,
            prune=options.prune,
            skip_special_files=options.skip_special_files,
            include_special_files=options.include_special_files,
        )
        yield SourceImage(tree, None, str(ref.path))
        return
    with contextlib.ExitStack() as stack:
        if ref.transport == "docker":
            # Pull into a local layout first: streamed to disk, digests verified.
            pulled = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chunkah-pull-")))
            _run_registry(lambda client: _pull(client, source, f"oci:{pulled}/image:src"), options)
            ref = oci.parse_reference(f"oci:{pulled}/image:src")
        image = oci.resolve_image(ref)
        spool = stack.enter_context(tempfile.TemporaryDirectory(prefix="chunkah-spool-"))
        tree = flatten_layers(_drained_layers(image), spool_dir=spool)
        for rule in options.prune:
            tree = _pruned(tree, rule)
        yield SourceImage(tree, image.config, source)


def _run_registry(
    job: Callable[[RegistryClient], Awaitable[object]], options: BuildOptions
) -> None:
    from chunkah.registry.client import RegistryClient  # aiohttp only when a registry is used

    async def go() -> None:
        async with RegistryClient(
            plain_http=options.plain_http, tls_verify=options.tls_verify
        ) as client:
            await job(client)

    asyncio.run(go())


async def _pull(client: RegistryClient, source: str, dest: str) -> None:
    from chunkah.registry.transfer import pull_image

    await pull_image(client, source, dest)


def _pruned(tree: Tree, rule: str) -> Tree:
    """The prune rules of read_dir, applied to a tree read from an image."""
    whole, contents = parse_prune([rule])
    kept = Tree()
    for entry in tree:
        p = entry.path
        if any(p == w or is_below(p, w) for w in whole) or any(is_below(p, c) for c in contents):
            continue
        kept.add(entry)
    return kept


def plan_single_layer(tree: Tree, mtime_clamp: int | None) -> list[LayerSpec]:
    """The whole tree in one layer, one clamp for every entry."""
    return [LayerSpec(tree=tree, name="rootfs", mtime_clamp=mtime_clamp)]


def read_previous_plan(ref: str) -> list[tuple[str, tuple[str, ...]]]:
    image = oci.resolve_image(ref)
    return [(p.name, p.components) for p in previous_plan([d.annotations for d in image.layers])]


def plan_content_layers(
    tree: Tree, options: BuildOptions, clamp: int | None, progress: Progress
) -> tuple[list[LayerSpec], LayerPlan]:
    """Package-ownership layers: owners -> plan (stateless or history-aware) -> trees."""
    build_epoch = clamp if clamp is not None else int(time.time())
    ownership = assign_components(tree, build_epoch=build_epoch)
    infos = component_infos(ownership)
    if options.previous:
        from chunkah.packing import PreviousLayer

        old = [PreviousLayer(n, c) for n, c in read_previous_plan(options.previous)]
        plan = plan_history(infos, options.max_layers, old)
    else:
        plan = plan_stateless(infos, options.max_layers)
    for warning in plan.warnings:
        progress(f"warning: {warning}")
    progress(
        f"{len(infos)} components ({ownership.unclaimed_bytes} unclaimed bytes) "
        f"-> {len(plan.layers)} layers ({plan.mode})"
    )
    specs = [
        LayerSpec(tree=lt.tree, name=lt.name, mtime_clamp=None, annotations=lt.annotations)
        for lt in layer_trees(plan, tree, ownership, source_date_epoch=clamp)
    ]
    return specs, plan


def _write_layer(
    layout: OciLayout, spec: LayerSpec, options: BuildOptions, threads: int
) -> BuiltLayer:
    annotations = dict(spec.annotations)
    with layout.blob_writer() as blob:
        if options.compression == "chunked":
            settings = ChunkedSettings(threads=threads)
            if options.level is not None:
                settings = replace(settings, level=options.level)
            layer, _toc = write_chunked_layer(
                spec.tree, blob, mtime_clamp=spec.mtime_clamp, settings=settings
            )
            digests = BlobDigests(
                layer.diff_id, layer.digest, layer.size, layer.uncompressed_size, Compression.ZSTD
            )
            annotations.update(layer.annotations())
        else:
            writer = CompressingWriter(
                blob,  # type: ignore[arg-type]
                Compression(options.compression),
                level=options.level,
                threads=threads,
            )
            write_tar(spec.tree, writer, mtime_clamp=spec.mtime_clamp, digest=False)  # type: ignore[arg-type]
            digests = writer.finish()
        blob.commit(digests.digest, digests.size)
    descriptor = Descriptor(
        media_type=oci.layer_media_type(digests.compression),
        digest=digests.digest,
        size=digests.size,
        annotations=annotations,
    )
    return BuiltLayer(descriptor, digests, spec.name, len(spec.tree))


def write_layers(
    layout: OciLayout, specs: Sequence[LayerSpec], options: BuildOptions, progress: Progress
) -> list[BuiltLayer]:
    """Write every layer blob; the result is in plan order whatever the worker count."""
    workers = max(1, options.workers)
    if len(specs) == 1 or workers == 1:
        # One layer: give the workers to the compressor instead.
        threads = workers if len(specs) == 1 else 1
        built = []
        for spec in specs:
            built.append(_write_layer(layout, spec, options, threads))
            progress(f"layer {spec.name}: {built[-1].descriptor.size} bytes")
        return built
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_write_layer, layout, spec, options, 1) for spec in specs]
        results = []
        for spec, future in zip(specs, futures, strict=True):
            results.append(future.result())
            progress(f"layer {spec.name}: {results[-1].descriptor.size} bytes")
        return results


def resolve_clamp(options: BuildOptions) -> int | None:
    if options.mtime_clamp is not None:
        return options.mtime_clamp
    return oci.source_date_epoch()


def build(
    source: str,
    destination: str,
    options: BuildOptions,
    *,
    progress: Progress = _no_progress,
) -> BuildResult:
    """Build SOURCE into DEST (oci:DIR[:TAG] or oci-archive:FILE[:TAG])."""
    started = time.perf_counter()
    clamp = resolve_clamp(options)
    dest_ref = oci.parse_reference(destination)
    if dest_ref.transport == "docker":
        # Build into a local layout, then push it (blobs the registry has are skipped).
        with tempfile.TemporaryDirectory(prefix="chunkah-push-") as tmp:
            from chunkah.registry.reference import parse_registry_reference
            from chunkah.registry.transfer import push_image

            tag = options.tag or parse_registry_reference(destination).tag or "latest"
            local = build(
                source, f"oci:{tmp}/image:{tag}", replace(options, tag=tag), progress=progress
            )
            pushed: list[str] = []

            async def push(client: RegistryClient) -> None:
                pushed.append(await push_image(client, f"oci:{tmp}/image:{tag}", destination))

            _run_registry(push, options)
            progress(f"pushed {destination} ({pushed[0]})")
            return replace(local, destination=destination)
    if dest_ref.transport not in ("oci", "oci-archive"):
        raise InputError(
            f"{destination}: write to oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://"
        )
    with open_source(source, options) as src:
        progress(f"read {src.description}: {len(src.tree)} entries")
        if options.max_layers == 1 and not options.previous:
            specs = plan_single_layer(src.tree, clamp)
        else:
            specs, _plan = plan_content_layers(src.tree, options, clamp, progress)
        base = src.config
        if options.base_config is not None:
            base = oci.load_base_config(options.base_config)
        with oci.open_output(dest_ref) as (layout, ref_tag):
            built = write_layers(layout, specs, options, progress)
            config = oci.build_config(
                base,
                [
                    LayerHistory(
                        diff_id=layer.digests.diff_id,
                        created_by=f"chunkah build: {layer.name}",
                        comment=None,
                    )
                    for layer in built
                ],
                labels=options.labels,
                arch=options.arch,
                created=clamp,
            )
            manifest = oci.write_image(
                layout,
                config,
                [layer.descriptor for layer in built],
                tag=options.tag or ref_tag,
                annotations=options.annotations,
            )
            sbom = None
            if options.sbom:
                from chunkah.sbom import attach_tree_sbom

                epoch = clamp if clamp is not None else int(time.time())
                name = options.tag or ref_tag or "image"
                sbom = attach_tree_sbom(layout, manifest, src.tree, name=name, build_epoch=epoch)
                progress(f"sbom: {sbom.digest}")
    seconds = time.perf_counter() - started
    return BuildResult(destination, manifest, tuple(built), seconds, sbom=sbom)


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)
