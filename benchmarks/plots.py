"""PNG plots of a suite run (matplotlib, no display): bytes per update, bytes vs chunk size."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator

#: Colours by strategy: ours warm, client-side peers cool, per-pair deltas purple, the
#: full pull grey; anything new gets the next tab10 colour.
COLOURS = {
    "full-gzip": "#7f7f7f",
    "layers-stateless": "#fdae6b",
    "layers-history": "#e6550d",
    "chunkah-update": "#a50f15",
    "chunkah-delta": "#fb6a4a",
    "podman-zstd-chunked": "#3182bd",
    "casync": "#9ecae1",
    "zchunk": "#31a354",
    "rsync": "#a1d99b",
    "ostree-delta": "#756bb1",
    "xdelta3": "#bcbddc",
    "zstd-patch-from": "#dadaeb",
}


def _mb(y: float, _pos: object) -> str:
    return f"{y:g}"


def plot_bytes(doc: dict[str, Any], out: Path) -> bool:
    """One panel per series: grouped bars (one per strategy) per step, log scale.

    Hatched bars: the strategy's tree differs from the target.  Returns False if
    there is nothing to plot.
    """
    labels = {s["name"]: s["label"] for s in doc["strategies"]}

    def measured(st: dict[str, Any]) -> bool:
        return any(c.get("status") == "ok" for c in st["cells"].values())

    panels = [(n, [st for st in s["steps"] if measured(st)]) for n, s in doc["series"].items()]
    panels = [(n, steps) for n, steps in panels if steps]
    if not panels:
        return False
    names = [
        n
        for n in labels
        if any(
            n in st["cells"] and st["cells"][n].get("status") == "ok"
            for _, ss in panels
            for st in ss
        )
    ]
    spare = iter(plt.get_cmap("tab10").colors)
    colour = {n: COLOURS.get(n) or next(spare) for n in names}
    low = min(
        c["bytes"]
        for _, ss in panels
        for st in ss
        for c in st["cells"].values()
        if c.get("status") == "ok" and c.get("bytes", 0) > 0
    )
    bottom = 10 ** math.floor(math.log10(low / 1e6))
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 3.6 * nrows + 1.2), squeeze=False)
    width = 0.8 / max(1, len(names))
    for ax, (series, steps) in zip(axes.flat, panels, strict=False):
        for i, name in enumerate(names):
            xs, ys, bad = [], [], []
            for j, st in enumerate(steps):
                c = st["cells"].get(name)
                if c is None or c.get("status") != "ok" or c["bytes"] <= 0:
                    continue
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(c["bytes"] / 1e6)
                bad.append(not (c.get("tree") or {}).get("ok", False))
            bars = ax.bar(xs, ys, width, color=colour[name], label=labels[name])
            for bar, wrong in zip(bars, bad, strict=True):
                if wrong:
                    bar.set_hatch("///")
                    bar.set_edgecolor("black")
            small = 6 if len(names) * len(steps) > 24 else 7
            for bar, y in zip(bars, ys, strict=True):
                ax.annotate(
                    f"{y:.3g}",
                    (bar.get_x() + bar.get_width() / 2, y),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=small,
                )
        ax.set_yscale("log")
        ax.set_ylim(bottom=bottom, top=ax.get_ylim()[1] * 3)  # room for the labels
        ax.set_xlim(-0.5, len(steps) - 0.5)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_mb))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda _y, _p: ""))
        ax.set_xticks(range(len(steps)), [st["step"] for st in steps], fontsize=8)
        ax.set_title(f"{series}", fontsize=10)
        ax.set_ylabel("MB on the wire (log)")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, hlabels = axes.flat[0].get_legend_handles_labels()
    per_row = 3 if ncols > 1 else 2
    fig.legend(handles, hlabels, loc="lower center", ncol=per_row, fontsize=8, frameon=False)
    fig.suptitle(
        f"Bytes per update, every strategy ({doc['machine']['date']}; hatched: wrong tree)",
        fontsize=11,
    )
    legend_rows = (len(names) + per_row - 1) // per_row
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.5, 0.2 * legend_rows / height + 0.02), 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_chunk_sizes(doc: dict[str, Any], out: Path) -> bool:
    """Update bytes and fresh image size against the FastCDC average chunk size."""
    rows = doc.get("sweep") or []
    if not rows:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = sorted({(r["series"], r["step"]) for r in rows})
    for series, step in steps:
        pts = sorted(
            (r for r in rows if (r["series"], r["step"]) == (series, step)),
            key=lambda r: r["cdc_kib"][1],
        )
        xs = [r["cdc_kib"][1] for r in pts]
        ax.plot(xs, [r["update_bytes"] / 1e6 for r in pts], marker="o", label=f"{series} {step}")
        ax.plot(
            xs,
            [r["per_file_cdc_estimate"] / 1e6 for r in pts],
            linestyle=":",
            color=ax.lines[-1].get_color(),
        )
        new = step.split("->")[-1]
        ax2.plot(xs, [r["image_bytes"] / 1e6 for r in pts], marker="s", label=f"{series} {new}")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks([r for r in sorted({r["cdc_kib"][1] for r in rows})])
        a.set_xticklabels([f"{x}" for x in sorted({r["cdc_kib"][1] for r in rows})])
        a.set_xlabel("FastCDC average chunk size, KiB (min = avg/4, max = 4 avg)")
        a.grid(alpha=0.3, which="both")
        a.axvline(64, color="grey", linestyle="--", linewidth=0.8)
        a.annotate("default", (64, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                   textcoords="offset points", fontsize=8, color="grey")  # fmt: skip
    ax.set_ylabel("update MB (solid); dotted: per-file CDC estimate")
    ax.set_title("Bytes per update vs chunk size", fontsize=10)
    ax.legend(fontsize=8)
    ax2.set_ylabel("fresh-pull image MB")
    ax2.set_title("Image size vs chunk size", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def render(doc: dict[str, Any], bytes_png: Path, sweep_png: Path) -> None:
    plot_bytes(doc, bytes_png)
    plot_chunk_sizes(doc, sweep_png)
