"""Components -> at most N layers, deterministic and stable under small changes.

Two steps, both pure:

- :func:`plan_layers` decides which components go into which layer, from component
  names, sizes and stabilities only (stateless), or keeping the previous image's
  plan (history-aware).
- :func:`layer_trees` turns a plan into one tree per layer: the components' paths,
  every parent directory they need (with the same metadata in every layer), and
  mtimes clamped per component so an unchanged package gives a byte-identical layer.

Stateless packing follows coreos/chunkah: when there are more components than
layers, size outliers (>= median + 1.5 MAD) get layers of their own, the rest are
split into three stability tiers (mean +- one standard deviation) and hashed into
bins by FNV-1a-64 of their name, so adding or removing one package moves nothing
else.  The unclaimed catch-all, which changes on every build, always has a layer of
its own and goes last; layers are ordered most stable first.  One layer of the
budget is kept free, so that a history-aware rebuild has room for new components.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from chunkah.errors import InputError
from chunkah.owners import Ownership
from chunkah.tree import Entry, EntryType, Tree
from chunkah.tree.model import parent_of

UNCLAIMED = "chunkah/unclaimed"
NEW_LAYER = "chunkah/new"  # history-aware: where components the previous plan lacked go
ANNOTATION_LAYER = "org.chunkah.layer"
ANNOTATION_COMPONENTS = "org.chunkah.layer.components"
DEFAULT_MAX_LAYERS = 64
# Share of the layer budget that size outliers may take (as coreos/chunkah).
OUTLIER_BUDGET = 0.8


@dataclass(frozen=True)
class ComponentInfo:
    """What the planner knows about a component: nothing that needs I/O."""

    name: str
    version: str
    size: int
    stability: float


@dataclass(frozen=True)
class PlannedLayer:
    name: str
    components: tuple[str, ...]  # sorted

    def annotations(self, versions: Mapping[str, str]) -> dict[str, str]:
        listing = {c: versions.get(c, "") for c in self.components}
        return {
            ANNOTATION_LAYER: self.name,
            ANNOTATION_COMPONENTS: json.dumps(listing, sort_keys=True, separators=(",", ":")),
        }


@dataclass(frozen=True)
class LayerPlan:
    layers: tuple[PlannedLayer, ...]
    mode: str  # "single", "stateless" or "history"
    warnings: tuple[str, ...] = ()

    def layer_of(self) -> dict[str, str]:
        return {c: layer.name for layer in self.layers for c in layer.components}


@dataclass(frozen=True)
class PreviousLayer:
    """A layer of the previous image, as its annotations describe it."""

    name: str
    components: tuple[str, ...]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _stability_order(
    layers: list[PlannedLayer], info: Mapping[str, ComponentInfo]
) -> list[PlannedLayer]:
    """Most stable first (mean stability weighted by size); the catch-all last."""

    def key(layer: PlannedLayer) -> tuple[int, float, str]:
        if UNCLAIMED in layer.components:
            return (1, 0.0, layer.name)
        total = sum(info[c].size for c in layer.components) or 1
        mean = sum(info[c].stability * (info[c].size or 1) for c in layer.components) / total
        return (0, -round(mean, 9), layer.name)

    return sorted(layers, key=key)


def _allocate(weights: Sequence[float], total: int) -> list[int]:
    """Split `total` bins across tiers by weight, at least one per non-empty tier."""
    active = [i for i, w in enumerate(weights) if w > 0]
    out = [0] * len(weights)
    if not active:
        return out
    for i in active:
        out[i] = 1
    spare = total - len(active)
    if spare <= 0:
        return out
    wsum = sum(weights[i] for i in active)
    shares = {i: spare * weights[i] / wsum for i in active}
    for i in active:
        out[i] += math.floor(shares[i])
    left = total - sum(out)
    # Largest remainder; ties broken by tier index, so the result is deterministic.
    for i in sorted(active, key=lambda i: (-(shares[i] - math.floor(shares[i])), i))[:left]:
        out[i] += 1
    return out


def plan_stateless(components: Sequence[ComponentInfo], max_layers: int) -> LayerPlan:
    if max_layers < 1:
        raise InputError(f"--max-layers must be at least 1, got {max_layers}")
    info = {c.name: c for c in components}
    names = sorted(info)
    if max_layers == 1:
        return LayerPlan((PlannedLayer("rootfs", tuple(names)),), "single")
    # One slot stays free for the components a later history-aware build adds.
    budget = max_layers - 1 if max_layers > 3 else max_layers
    if len(names) <= budget:
        singles = [PlannedLayer(n, (n,)) for n in names]
        return LayerPlan(tuple(_stability_order(singles, info)), "stateless")

    layers: list[PlannedLayer] = []
    rest = [n for n in names if n != UNCLAIMED]
    if UNCLAIMED in info:
        layers.append(PlannedLayer(UNCLAIMED, (UNCLAIMED,)))
        budget -= 1
    # Size outliers get layers of their own, biggest first, within the outlier budget
    # and leaving at least one layer per stability tier for the rest.
    sizes = [info[n].size for n in rest]
    median = statistics.median(sizes) if sizes else 0
    mad = statistics.median([abs(s - median) for s in sizes]) if sizes else 0
    threshold = median + 1.5 * mad
    outliers = sorted(
        (n for n in rest if info[n].size >= threshold and info[n].size > 0),
        key=lambda n: (-info[n].size, n),
    )
    max_outliers = max(0, min(int(budget * OUTLIER_BUDGET), budget - 3))
    outliers = outliers[:max_outliers]
    for n in outliers:
        layers.append(PlannedLayer(n, (n,)))
    budget -= len(outliers)
    binned = [n for n in rest if n not in set(outliers)]
    if binned:
        stab = [info[n].stability for n in binned]
        mean = statistics.fmean(stab)
        sd = statistics.pstdev(stab)
        if budget >= 3:
            tiers: list[list[str]] = [[], [], []]
            for n in binned:
                s = info[n].stability
                tiers[0 if s > mean + sd else 2 if s < mean - sd else 1].append(n)
            bins = _allocate([sum(info[n].size for n in t) + len(t) for t in tiers], budget)
            labels: tuple[str, ...] = ("stable", "middle", "volatile")
        else:  # too few layers left to split by stability
            tiers, bins, labels = [binned], [max(1, budget)], ("mixed",)
        for tier, members, count in zip(labels, tiers, bins, strict=True):
            if not members:
                continue
            buckets: dict[int, list[str]] = {}
            for n in members:
                buckets.setdefault(fnv1a64(n.encode()) % count, []).append(n)
            for b, comps in sorted(buckets.items()):
                layers.append(PlannedLayer(f"chunkah/{tier}-{b:03d}", tuple(sorted(comps))))
    return LayerPlan(tuple(_stability_order(layers, info)), "stateless")


def plan_history(
    components: Sequence[ComponentInfo], max_layers: int, previous: Sequence[PreviousLayer]
) -> LayerPlan:
    """Keep every surviving component in its previous layer; new ones go to one layer.

    Falls back to stateless packing (with a warning) when the previous plan is
    unusable or no longer fits in `max_layers`.
    """
    info = {c.name: c for c in components}
    if not previous:
        plan = plan_stateless(components, max_layers)
        return replace(
            plan, warnings=("the previous image has no chunkah layer plan; packed stateless",)
        )
    placed: set[str] = set()
    layers: list[PlannedLayer] = []
    new_members: list[str] = []
    for old in previous:
        keep = [c for c in old.components if c in info and c not in placed]
        placed.update(keep)
        if old.name == NEW_LAYER:
            new_members.extend(keep)
        elif keep:
            layers.append(PlannedLayer(old.name, tuple(sorted(keep))))
    new_members.extend(n for n in sorted(info) if n not in placed)
    if new_members:
        layers.append(PlannedLayer(NEW_LAYER, tuple(sorted(set(new_members)))))
    if len(layers) > max_layers:
        plan = plan_stateless(components, max_layers)
        return replace(
            plan,
            warnings=(
                f"the previous layer plan needs {len(layers)} layers, more than --max-layers "
                f"{max_layers}; packed stateless",
            ),
        )
    # Previous order is kept: reordering would change nothing but the manifest.
    return LayerPlan(tuple(layers), "history")


def previous_plan(layer_annotations: Sequence[Mapping[str, str]]) -> list[PreviousLayer]:
    """Read a previous image's plan from its layer descriptors' annotations."""
    plan = []
    for i, notes in enumerate(layer_annotations):
        name = notes.get(ANNOTATION_LAYER)
        raw = notes.get(ANNOTATION_COMPONENTS)
        if name is None or raw is None:
            return []  # not built by chunkah (or by a single-layer build)
        try:
            listing = json.loads(raw)
        except ValueError:
            raise InputError(
                f"previous image: layer {i} has a malformed {ANNOTATION_COMPONENTS}"
            ) from None
        if not isinstance(listing, dict):
            raise InputError(
                f"previous image: layer {i} {ANNOTATION_COMPONENTS} is not a JSON object"
            )
        plan.append(PreviousLayer(name, tuple(sorted(str(k) for k in listing))))
    return plan


def component_infos(ownership: Ownership) -> list[ComponentInfo]:
    return [
        ComponentInfo(c.name, c.version, ownership.bytes_of(c.name), c.stability)
        for c in ownership.components()
    ]


@dataclass(frozen=True)
class LayerTree:
    """One planned layer, materialised: its tree (already clamped) and annotations."""

    name: str
    tree: Tree
    annotations: dict[str, str] = field(default_factory=dict)


def clamp_for(ownership: Ownership, source_date_epoch: int | None) -> dict[str, int | None]:
    """Per component: min(package build time, SOURCE_DATE_EPOCH), whichever exist."""
    out: dict[str, int | None] = {}
    for c in ownership.components():
        values = [v for v in (c.mtime_clamp, source_date_epoch) if v is not None]
        out[c.name] = min(values) if values else None
    return out


# Directories holding more than one component's entries (usr/, usr/bin/, ...) appear
# in many layers; their mtime must not follow any one package, or a single package
# update would change every layer that carries them.  Like OSTree, they get 0.
SHARED_DIR_MTIME = 0


def entry_clamps(
    tree: Tree, ownership: Ownership, source_date_epoch: int | None
) -> dict[bytes, int | None]:
    """The mtime clamp of every path: its component's clamp, or SHARED_DIR_MTIME for
    a directory whose subtree holds entries of several components."""
    clamps = clamp_for(ownership, source_date_epoch)
    below: dict[bytes, set[str]] = {}
    for path in tree.paths():
        name = ownership.component_of(path).name
        p = path
        while p:
            p = parent_of(p)
            seen = below.setdefault(p, set())
            if name in seen:
                break  # every ancestor above already has it
            seen.add(name)
    out: dict[bytes, int | None] = {}
    for entry in tree:
        owner = ownership.component_of(entry.path).name
        if entry.type is EntryType.DIR and len(below.get(entry.path, set()) | {owner}) > 1:
            out[entry.path] = SHARED_DIR_MTIME
        else:
            out[entry.path] = clamps.get(owner)
    return out


def layer_trees(
    plan: LayerPlan, tree: Tree, ownership: Ownership, *, source_date_epoch: int | None
) -> list[LayerTree]:
    """One tree per planned layer.

    Each entry's mtime is clamped by :func:`entry_clamps`, whatever layer it appears
    in, so a directory shared by several layers carries the same metadata in each,
    and the unpacked image has one mtime per path.
    """
    clamps = entry_clamps(tree, ownership, source_date_epoch)

    def clamped(entry: Entry) -> Entry:
        limit = clamps.get(entry.path)
        if limit is None or entry.mtime <= limit:
            return entry
        return replace(entry, mtime=limit)

    versions = {c.name: c.version for c in ownership.components()}
    out = []
    for layer in plan.layers:
        sub = Tree()
        for comp in layer.components:
            for path in ownership.paths_of(comp):
                entry = tree[path]
                sub.add(clamped(entry))
                parent = path
                while parent:
                    parent = parent_of(parent)
                    if parent in sub:
                        break
                    above = tree.get(parent)
                    if above is not None:
                        sub.add(clamped(above))
        sub.canonicalize_hardlinks()
        out.append(LayerTree(layer.name, sub, layer.annotations(versions)))
    return out
