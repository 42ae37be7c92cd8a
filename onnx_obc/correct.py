"""Correction after compression, per output channel of every compressed layer, measured on
the calibration data: the compressed model's layer output y_hat against the dense model's y.
Mean (--correct):     y_hat  <-  y_hat + (E[y] - E[y_hat])
Scale (--correct-scale), the least-squares affine fit per channel:
                      y_hat  <-  a (y_hat - E[y_hat]) + E[y],   a = Cov(y, y_hat) / Var(y_hat)

This module measures a shift d = E[y] - a E[y_hat] and a scale a [M] per node
(`export.ChannelFix`); the exporter folds them (export/values.py) into the bias and the
weight rows (or DequantizeLinear scales: the integer codes stay). Layers are corrected in
topological order, each with the upstream corrections in place: the mean in one pass, piece
by piece (segments.py), the scale level by level. With activation quantization
(`act_values`) the model measured is the deployed one, activation Q/DQ included (empirical
bias correction, Nagel et al. 2019; AIMET). Conv / Gemm without a bias get one; a MatMul is
corrected through the Add that consumes it where its other input is a constant vector; a
weight read by several nodes gets no scale; the rest is left, with the reason. Where it
runs: `correction_mode`; `auto_decision` keeps or drops an automatic one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from .calib import DataSet
from .calib.tokens import on_tokens
from .capture import capture, capture_session
from .collect import ChannelMean
from .corrstats import channel_axis, node_ops, paired_stats
from .export import ChannelFix, bias_targets, build, float_model
from .layers import Layer, node_label
from .segments import TooLarge, run_in_segments

if TYPE_CHECKING:
    from .calib.plan import Calibration
    from .config import CompressConfig
    from .solve import HostSolution


def _output_means(model: onnx.ModelProto, outputs: dict[str, str], data: DataSet, batch: int,
                  providers: list[str], token_mask: str | None = None) -> dict[str, np.ndarray]:
    """Mean per output channel of each node output (node label -> [M]); on the token
    positions of `token_mask` where the channels are last (calib/tokens.on_tokens)."""
    names = list(dict.fromkeys(outputs.values()))
    sess = capture_session(model, names, providers, prune=True)  # up to them
    ops = node_ops(model)
    acc = {label: ChannelMean(channel_axis(ops[label])) for label in outputs}
    for _, acts in capture(sess, names, data.batches(batch)):
        for label, t in outputs.items():
            acc[label].add(on_tokens(acts[t], acts, token_mask, acc[label].axis))
    return {k: m.mean() for k, m in acc.items()}


def correction_mode(cfg: CompressConfig) -> str:
    """"on" (asked for), "auto" (by default where it was measured to pay: quantization alone
    with 8-bit activations on the onnxruntime target, kept where it lowers the output
    error: auto_decision) or "off"."""
    c, q = cfg.correct, cfg.quant
    if c.active:
        return "on"
    auto = (c.mean is None and q.bits is not None and q.act_bits == 8
            and cfg.export.runtime == "onnxruntime" and not cfg.prune.active
            and not cfg.alloc.active and cfg.prune.channels is None)
    return "auto" if auto else "off"


def reference_means(dense: onnx.ModelProto, layers: list[Layer], cfg: CompressConfig,
                    data: Calibration) -> dict[str, ChannelMean] | None:
    """Per correction site's output an empty ChannelMean the capture fills from its dense runs,
    where the mean correction follows a one-shot capture (not sequential, not the scale) and
    measures every calibration sample (a subset: its own pass, paired with its samples)."""
    if (correction_mode(cfg) == "off" or cfg.correct.scale or cfg.run.sequential
            or data.corrected is not data.fit):
        return None
    sites, _ = bias_targets(dense, layers)
    ops = node_ops(dense)
    return {site.output: ChannelMean(channel_axis(ops[label])) for label, site in sites.items()}


def _scalable(layers: list[Layer]) -> tuple[dict[str, Layer], list[str]]:
    """node label -> layer whose weight rows can take a per-output-channel scale."""
    ok, why = {}, []
    for L in layers:
        G, r, _ = L.matrix_shape
        if len(L.uses) > 1:
            why.append(f"{L.name}: no scale correction (its weight is read by {len(L.uses)} nodes)")
        elif L.layout not in ("conv", "deconv") and len(L.shape) != 2:
            why.append(f"{L.name}: no scale correction ({len(L.shape)}-D MatMul weight)")
        else:
            ok[L.uses[0].node] = L
    return ok, why


@dataclass(frozen=True)
class CorrectionResult:
    """Per node (label) its shift and scale, in the order measured (topological levels);
    the reasons for layers left alone (or without a scale); mean |shift| per level."""

    fixes: dict[str, ChannelFix]
    skipped: tuple[str, ...] = ()
    shifts: tuple[float, ...] = ()
    how: str = "level by level"
    decision: str = ""  # the automatic correction's keep-or-drop line
    kept: bool | None = None  # its verdict (None: not automatic; pinned.py)
    samples: int = 0  # the calibration samples measured

    def skipped_lines(self) -> list[str]:
        """The report's warnings: one line per reason, naming its nodes (the first three
        and how many more), not one line per node (ALBERT: 12 nodes, one reason)."""
        nodes: dict[str, list[str]] = {}
        for s in self.skipped:
            node, _, why = s.partition(": ")
            nodes.setdefault(why, []).append(node)
        return [f"correction skipped for {', '.join(n[:3])}"
                + (f" and {len(n) - 3} more" if len(n) > 3 else "") + f": {why}"
                for why, n in nodes.items()]

    def summary(self) -> dict:
        d: dict = {"mean_abs_shift_per_level": list(self.shifts), "measured": self.how,
                   "samples": self.samples}
        d.update({"decision": self.decision} if self.decision else {})
        scales = [f.scale for f in self.fixes.values() if f.scale is not None]
        if scales:
            dev = np.concatenate([np.abs(a - 1.0) for a in scales])
            d["scale"] = {"layers": len(scales), "mean_abs_deviation": float(dev.mean()),
                          "max_abs_deviation": float(dev.max())}
        return d


def _depth_levels(model: onnx.ModelProto, labels: set[str]) -> list[list[str]]:
    """Group the labelled nodes by how many labelled nodes lie on their longest input path:
    a group's outputs do not depend on each other's biases (graph.node is topological)."""
    depth: dict[str, int] = {}  # tensor -> labelled nodes upstream (inclusive)
    levels: dict[int, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        label = node_label(n, i)
        d = max((depth.get(x, 0) for x in n.input if x), default=0)
        if label in labels:
            d += 1
            levels.setdefault(d, []).append(label)
        for o in n.output:
            depth[o] = d
    return [levels[k] for k in sorted(levels)]


def _streamed(dense: onnx.ModelProto, model: onnx.ModelProto, outputs: dict[str, str],
              ref: dict[str, np.ndarray], data: DataSet, batch: int, providers: list[str],
              budget: int, bar: Any, token_mask: str | None = None) -> dict[str, ChannelFix]:
    """The mean corrections from one pass over the uncorrected `model`, piece by piece: each
    site's output is measured with every upstream site corrected, then corrected in the
    tensors the rest of the model reads (adding the shift to the output is what the corrected
    bias does), as the level-by-level passes do; kept tensors over `budget` bytes on disk."""
    label_of = {t: label for label, t in outputs.items()}
    ops, fixes = node_ops(dense), {}
    feeds = [{token_mask: f[token_mask]} for _, f in data.batches(batch)] if token_mask else None

    def visit(t: str, ys: Sequence[np.ndarray]) -> np.ndarray:
        label, got = label_of[t], ChannelMean(channel_axis(ops[label_of[t]]))
        for i, y in enumerate(ys):  # each read once (those on disk, segments.py)
            got.add(y if feeds is None else on_tokens(y, feeds[i], token_mask, got.axis))
        fixes[label] = ChannelFix(ref[label] - got.mean(), None)
        shape = [1] * y.ndim
        shape[channel_axis(ops[label])] = -1
        bar.update()
        return fixes[label].shift.reshape(shape).astype(y.dtype)  # what later nodes read

    run_in_segments(model, list(label_of), data.batches(batch), providers, visit, budget)
    return fixes


def correct_outputs(dense: onnx.ModelProto, layers: list[Layer],
                    solutions: Mapping[str, HostSolution], data: DataSet, batch: int,
                    providers: list[str], scale: bool = False,
                    act_values: dict[str, Any] | None = None, target: str = "tensorrt",
                    target_options: Mapping[str, Any] | None = None,
                    budget: int = 2 << 30, progress: bool = False,
                    means: Mapping[str, ChannelMean] | None = None,
                    uncorrected: onnx.ModelProto | None = None, token_mask: str | None = None
                    ) -> CorrectionResult:
    """The per-channel corrections of the compressed `layers` (their `solutions`) against
    the `dense` model, and the reasons for layers left alone (or without a scale).

    Each layer is measured with every upstream correction in place (all at once would count
    upstream shifts twice), on the float model or with `act_values` the one `target` deploys
    (the layer's output before its own output quantization). The mean correction runs the
    model once, piece by piece, keeping the tensors that cross each cut (over `budget` bytes
    on disk, segments.py); the scale correction, or a run whose kept tensors fit neither, one
    pass per topological level (two with `scale`). `means` (reference_means, filled by the
    capture): the dense outputs' means, where every site's was taken; else a pass measures them.
    `uncorrected`: that model without corrections, where the caller built it. `token_mask`
    (calib/tokens.py): outputs with channels last measured on the token positions only
    (as the capture's `means`)."""
    sites, skipped = bias_targets(dense, layers)
    scalable, why = _scalable(layers) if scale else ({}, [])
    skipped += why
    outputs = {label: site.output for label, site in sites.items()}
    taken = means is not None and all(t in means and means[t].n for t in outputs.values())
    ref = ({} if scale or not sites else
           {k: means[t].mean() for k, t in outputs.items()} if taken else
           _output_means(dense, outputs, data, batch, providers, token_mask))
    fixes: dict[str, ChannelFix] = {}
    levels = _depth_levels(dense, set(sites))

    def deployed(fixes: dict[str, ChannelFix]) -> onnx.ModelProto:
        return (uncorrected if uncorrected is not None and not fixes else
                float_model(dense, layers, solutions, corrections=fixes) if act_values is None
                else build(dense, layers, solutions, corrections=fixes, act_scales=act_values,
                           target=target, target_options=target_options))

    how, shifts = "level by level", []
    bar = tqdm(total=len(sites), desc="correct", unit="layer", disable=not progress)
    if sites and not scale and len(set(outputs.values())) == len(outputs):
        try:
            fixes = _streamed(dense, deployed({}), outputs, ref, data, batch, providers, budget,
                              bar, token_mask)
            shifts = [float(np.mean([np.abs(fixes[k].shift).mean() for k in level]))
                      for level in levels]
            how = "one pass in pieces"
        except TooLarge as exc:
            how, fixes = f"level by level ({exc})", {}
            bar.reset()
    for level in levels if how.startswith("level") else ():
        model = deployed(fixes)
        sub = {k: outputs[k] for k in level}
        a: dict[str, np.ndarray] = {}
        if scale:
            stats = paired_stats(dense, model, sub, data, batch, providers, token_mask)
            a = {k: stats[k][2] for k in level if k in scalable}
            delta = {k: stats[k][0] - a.get(k, 1.0) * stats[k][1] for k in level}
            plain = {k: stats[k][0] - stats[k][1] for k in level}
        else:
            got = _output_means(model, sub, data, batch, providers, token_mask)
            delta = plain = {k: ref[k] - got[k] for k in level}
        shifts.append(float(np.mean([np.abs(v).mean() for v in plain.values()])))
        fixes.update({k: ChannelFix(delta[k], a.get(k)) for k in level})
        bar.update(len(level))
    bar.close()
    return CorrectionResult(fixes, tuple(skipped), tuple(shifts), how, samples=data.n)


MARGIN = 0.02  # the automatic correction is kept where it lowers the output error by >= 2%


def auto_decision(fixes: CorrectionResult, fidelity: Mapping[str, Any], on: str
                  ) -> tuple[bool, CorrectionResult]:
    """Keep the automatic correction? `fidelity[on]` holds the "compressed" (corrected) and
    "uncorrected" models' measures on the set `on` (the held-out calibration samples, else
    the calibration samples); kept where its mean relative output error is at least MARGIN
    below the uncorrected model's. Returns the verdict and `fixes` with the reason."""
    err = {k: fidelity[on][k].mean_error for k in ("compressed", "uncorrected")}
    keep, n = err["compressed"] <= (1.0 - MARGIN) * err["uncorrected"], len(
        fidelity[on]["compressed"].counted)  # the table shows the largest of n outputs
    line = (f"bias correction (automatic with --act-bits 8 on onnxruntime): "
            f"{'kept' if keep else 'not kept'}, output error on {on}"
            f"{f' (mean of {n} outputs)' if n > 1 else ''} {err['uncorrected']:.4g} "
            f"without, {err['compressed']:.4g} with it"
            + ("" if keep else f" (kept only {MARGIN:.0%} or more lower)"))
    return keep, replace(fixes, decision=line, kept=keep)
