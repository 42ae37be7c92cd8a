"""The report as one matplotlib figure (no pyplot: no global state, no display needed).

One row per layer, in model order, across up to three panels sharing the rows: the layer
loss over the baseline's (log scale; bars coloured by what produced the weights, hatched
red where the data is too little), the level (sparsity bar, bits and method as text), and,
with --sensitivity, the model's output error with only that layer compressed (the layers to
exclude first in red). With --allocate dp, a panel below: the DP's least estimated error
at every budget, the chosen point marked.
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..report import LayerResult, Report, short_name

ROW_INCH = 0.26  # height per layer
LABEL_WIDTH = 34  # characters of a layer name on the axis
DATA_LIMITED = "#d62728"


def render(report: Report, fmt: str = "png") -> bytes:
    """The figure, encoded as `fmt` (png, svg, pdf)."""
    fig = build(report)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    return buf.getvalue()


def level_text(x: LayerResult) -> str:
    """"50% w4/g32 gptq": sparsity, bits (group size), the method that produced it."""
    parts = [f"{x.sparsity:.0%}"] if x.target else []  # quantization's zeros not shown
    if x.bits:
        parts.append(f"w{x.bits}" + (f"/g{x.group_size}" if x.group_size else ""))
    parts.append(x.method_used or x.method)
    return " ".join(parts)


def build(report: Report) -> Figure:
    layers = report.layers
    sens = {s["layer"]: s for s in report.sensitivity.get("layers", [])}
    curve = report.profile.get("curve")
    n = max(1, len(layers))
    panels = 3 if sens else 2
    top = 1.2 + ROW_INCH * n
    bottom = 3.4 if curve else 0.0
    fig = Figure(figsize=(15, top + bottom), layout="constrained")
    grid = fig.add_gridspec(2 if curve else 1, panels, height_ratios=[top, bottom] if curve
                            else None, width_ratios=[1.2, 1.0, 1.2][:panels])
    fig.suptitle(_title(report), fontsize=11, ha="left", x=0.01)
    if layers:
        axes = [fig.add_subplot(grid[0, 0])]
        axes += [fig.add_subplot(grid[0, i], sharey=axes[0]) for i in range(1, panels)]
        _ratio_panel(axes[0], layers, report)
        _level_panel(axes[1], layers)
        if sens:
            _sensitivity_panel(axes[2], layers, sens, set(report.sensitivity.get("exclude", [])),
                               report.sensitivity)
    if curve:
        _curve_panel(fig.add_subplot(grid[1, :]), report.profile)
    return fig


def _title(r: Report) -> str:
    name = r.model.rsplit("/", 1)[-1]
    done = []
    for set_name, models in r.fidelity.items():
        f = next((m for k, m in models.items() if k == "compressed"), None)
        if f is not None and f.rel_error:
            done.append(f"output error {f.error:.4f} on {set_name}"
                        + (f", accuracy {f.accuracy:.2%}" if f.accuracy is not None else ""))
    c = r.config
    how = [f"sparsity {c['prune']['sparsity']}" if c["prune"].get("sparsity") else "",
           f"{c['prune']['nm'][0]}:{c['prune']['nm'][1]}" if c["prune"].get("nm") else "",
           f"w{c['quant']['bits']}" if c["quant"].get("bits") else "",
           f"a{c['quant']['act_bits']}" if c["quant"].get("act_bits") else "",
           f"allocate dp ({c['alloc']['budget']})" if c["alloc"].get("mode") == "dp" else "",
           c["solver"].get("method", "")] if c.get("prune") else []
    return (f"{name} ({', '.join(h for h in how if h)}): {len(r.layers)} layers compressed"
            + ("; " if done else "") + "; ".join(done))


def _rows(ax: Any, layers: list[LayerResult]) -> list[int]:
    ys = list(range(len(layers)))
    ax.set_yticks(ys, [short_name(x.name, LABEL_WIDTH) for x in layers], fontsize=8)
    ax.set_ylim(len(layers) - 0.5, -0.5)  # model order, top to bottom
    ax.grid(axis="x", alpha=0.3)
    return ys


def _ratio_panel(ax: Any, layers: list[LayerResult], r: Report) -> None:
    ys = _rows(ax, layers)
    methods = sorted({x.method_used or x.method for x in layers})
    palette = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    color = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    ratios = [x.ratio if math.isfinite(x.ratio) and x.ratio > 0 else None for x in layers]
    finite = [v for v in ratios if v is not None] or [1.0]
    floor = min(finite + [1.0]) / 2
    for y, x, v in zip(ys, layers, ratios):
        limited = x.data_limited
        ax.barh(y, (floor if v is None else v) - floor, left=floor,
                color=color[x.method_used or x.method], height=0.7,
                edgecolor=DATA_LIMITED if limited else "none", hatch="///" if limited else None,
                linewidth=1.2 if limited else 0)
        note = " -" if v is None else f" {v:.3g}"
        note += f"  rank {x.rank}/{x.cols}" if limited else ""
        ax.text(floor if v is None else v, y, note, va="center", fontsize=7,
                color=DATA_LIMITED if limited else "#333333")
    ax.set_xscale("log")
    ax.set_xlim(floor, max(finite + [1.0]) * 4)
    decades = math.log10(max(finite + [1.0]) * 4 / floor)
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if decades < 2.5 else (1,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    base = "baseline (RTN)" if any(x.bits for x in layers) else "baseline (magnitude)"
    ax.set_xlabel(f"layer loss / {base}  (log; < 1 beats it)")
    handles = [Patch(color=color[m], label=m) for m in methods]
    if any(x.data_limited for x in layers):
        handles.append(Patch(facecolor="white", edgecolor=DATA_LIMITED, hatch="///",
                             label="data-limited (rank < inputs)"))
    ax.legend(handles=handles, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=min(3, len(handles)), frameon=False, title="loss ratio to the baseline",
              title_fontsize=10)


def _level_panel(ax: Any, layers: list[LayerResult]) -> None:
    ys = _rows(ax, layers)
    ax.tick_params(axis="y", labelleft=False)
    pruned = any(x.target for x in layers)  # else the bars are the weight bits
    bars = [x.sparsity if pruned else (x.bits or 32) / 8 for x in layers]
    ax.barh(ys, bars, color="#9e9e9e", height=0.7)
    for y, x, v in zip(ys, layers, bars):
        ax.text(min(v, 1.0) + 0.01, y, level_text(x), va="center", fontsize=7)
    ax.set_xlim(0, 1.45)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], None if pruned else ["0", "2", "4", "6", "8"])
    ax.set_xlabel(("sparsity reached" if pruned else "weight bits") + " (bar); level, method")
    ax.set_title("level chosen", fontsize=10)


def _sensitivity_panel(ax: Any, layers: list[LayerResult], sens: dict[str, Any],
                       exclude: set[str], summary: dict[str, Any]) -> None:
    ys = _rows(ax, layers)
    ax.tick_params(axis="y", labelleft=False)
    errs = [sens[x.name]["error"] if x.name in sens else 0.0 for x in layers]
    ax.barh(ys, errs, height=0.7,
            color=[DATA_LIMITED if x.name in exclude else "#607d8b" for x in layers])
    rank = {s["layer"]: i + 1 for i, s in enumerate(summary["layers"])}
    for y, x, e in zip(ys, layers, errs):
        if x.name in rank:
            ax.text(e, y, f" #{rank[x.name]}  {e:.3g}", va="center", fontsize=7)
    ax.set_xlim(0, max(errs + [1e-12]) * 1.25)
    ax.set_xlabel(f"output error, only this layer compressed ({summary['set']})")
    ax.set_title("sensitivity (red: exclude first)", fontsize=10)


def _curve_panel(ax: Any, p: dict[str, Any]) -> None:
    dense = p["dense_cost"] or 1.0
    xs = [b / dense for b, _ in p["curve"]]
    ys = [e for _, e in p["curve"]]
    ax.step(xs, ys, where="post", color="#1f77b4", lw=1.5, label="least estimated error (DP)")
    ax.plot([p["target"] / dense], [p["error"]], "o", color=DATA_LIMITED, ms=8,
            label=f"chosen: {p['cost'] / dense:.1%} of dense, error {p['error']:.4g}")
    what = {"bops": "bit-operations", "flops": "FLOPs"}.get(p["budget"], "weights")
    ax.set_xlabel(f"budget: {what} kept, fraction of the dense FP32 model")
    ax.set_ylabel(f"summed error ({p['score']} score)")
    if p["budget"] == "bops":
        ax.set_xscale("log")
    positive = [e for e in ys if e > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("allocation: error versus budget", fontsize=10)
