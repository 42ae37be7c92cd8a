"""Correction after compression, per output channel of every compressed layer, measured on
the calibration data: the compressed model's layer output y_hat against the dense model's y.

Mean (--correct):     y_hat  <-  y_hat + (E[y] - E[y_hat])
Scale (--correct-scale), the least-squares affine fit per channel:
                      y_hat  <-  a (y_hat - E[y_hat]) + E[y],   a = Cov(y, y_hat) / Var(y_hat)

Both fold into the layer: the shift into its bias (b <- a b + E[y] - a E[y_hat]; Gemm:
C <- that / beta), the scale into its weight rows (W_c <- a_c W_c), and for quantized layers
into the DequantizeLinear scales, so the integer codes (and the zeros) stay as they are.
Means and scales shift downstream as upstream layers change, so layers are corrected in
topological order, level by level, each measured with the upstream corrections in place.
Where a layer has no bias the bias input is added (Conv, Gemm); a MatMul is corrected through
the Add that consumes it when that Add's other input is a constant vector, and otherwise left
as it is, with the reason. A weight read by several nodes gets no scale (one factor per use
cannot fold into one weight), with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calib import DataSet
from .capture import capture, capture_session
from .layers import Layer, constant_weights, node_label
from .qdq import QuantizedWeight
from .rewrite import apply_weights


def _mean_axes(y: np.ndarray, op: str) -> tuple[int, ...]:
    if op == "Conv":
        return (0, *range(2, y.ndim))  # [N, M, *spatial] -> per channel M
    return tuple(range(y.ndim - 1))  # [..., M]


def _output_means(model: onnx.ModelProto, outputs: dict[str, str], data: DataSet, batch: int,
                  providers: list[str]) -> dict[str, np.ndarray]:
    """Mean per output channel of each node output (node label -> [M])."""
    names = list(dict.fromkeys(outputs.values()))
    sess = capture_session(model, names, providers)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    ops = {n: op for n, op in _ops(model).items()}
    for _, acts in capture(sess, names, data.batches(batch)):
        for label, t in outputs.items():
            y = acts[t].astype(np.float64)
            axes = _mean_axes(y, ops[label])
            sums[label] = sums.get(label, 0.0) + y.sum(axis=axes)
            counts[label] = counts.get(label, 0) + int(y.size // y.shape[
                1 if ops[label] == "Conv" else -1])
    return {k: sums[k] / counts[k] for k in sums}


def _ops(model: onnx.ModelProto) -> dict[str, str]:
    return {node_label(n, i): n.op_type for i, n in enumerate(model.graph.node)}


def bias_targets(model: onnx.ModelProto, layers: list[Layer]) -> tuple[dict, list[str]]:
    """node label -> (node index, kind, output tensor); and the reasons for nodes left alone.
    kind: ("input", position) to correct the node's own bias input, or ("add", node index)."""
    g = model.graph
    by_label = {node_label(n, i): (i, n) for i, n in enumerate(g.node)}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for x in n.input:
            consumers.setdefault(x, []).append(i)
    inits = {t.name: t for t in g.initializer}
    targets, skipped = {}, []
    for L in layers:
        for u in L.uses:
            i, node = by_label[u.node]
            out = node.output[0]
            if node.op_type in ("Conv", "Gemm"):
                targets[u.node] = (i, ("input", 2), out)
                continue
            users = consumers.get(out, [])
            add = g.node[users[0]] if len(users) == 1 else None
            if add is not None and add.op_type == "Add":
                other = [x for x in add.input if x != out]
                t = inits.get(other[0]) if len(other) == 1 else None
                if t is not None and len(t.dims) == 1 and len(consumers.get(t.name, [])) == 1:
                    targets[u.node] = (i, ("add", users[0]), out)
                    continue
            skipped.append(f"{u.node}: no bias to fold the correction into (the MatMul output "
                           "is not consumed by a single Add with a constant vector)")
    return targets, skipped


def _fold(model: onnx.ModelProto, targets: dict, delta: dict[str, np.ndarray],
          scale: dict[str, np.ndarray]) -> None:
    """bias <- scale * bias + delta (own bias input) or bias + delta (the following Add)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for label, (i, (kind, where), _) in targets.items():
        node = g.node[i]
        d = delta[label]
        a = scale.get(label)
        if kind == "add":
            add = g.node[where]
            name = next(x for x in add.input if x != node.output[0])
            a = None  # the Add's vector comes after the measured output
        else:
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
            d = d / (beta or 1.0)
            if len(node.input) > where and node.input[where] in inits:
                name = node.input[where]
            else:
                name = f"{label}_bias_correction".replace("<", "").replace(">", "").replace(
                    " ", "_").replace("#", "")
                g.initializer.append(numpy_helper.from_array(np.zeros(d.shape, np.float32),
                                                             name))
                inits[name] = g.initializer[-1]
                while len(node.input) < where:
                    node.input.append("")
                node.input.append(name)
        t = inits[name]
        b = numpy_helper.to_array(t).astype(np.float64)
        if b.size == d.size:
            d, a = d.reshape(b.shape), None if a is None else a.reshape(b.shape)
        new = (b if a is None else a * b) + d
        t.CopyFrom(numpy_helper.from_array(
            new.astype(helper.tensor_dtype_to_np_dtype(t.data_type)), t.name))


def _scalable(layers: list[Layer]) -> tuple[dict[str, Layer], list[str]]:
    """node label -> layer whose weight rows can take a per-output-channel scale."""
    ok, why = {}, []
    for L in layers:
        G, r, _ = L.matrix_shape
        if len(L.uses) > 1:
            why.append(f"{L.name}: no scale correction (its weight is read by {len(L.uses)} "
                       "nodes)")
        elif L.layout != "conv" and len(L.shape) != 2:
            why.append(f"{L.name}: no scale correction ({len(L.shape)}-D MatMul weight)")
        else:
            ok[L.uses[0].node] = L
    return ok, why


def _paired_stats(dense: onnx.ModelProto, model: onnx.ModelProto, outputs: dict[str, str],
                  data: DataSet, batch: int, providers: list[str]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per channel: (E[y], E[y_hat], Cov(y, y_hat) / Var(y_hat)); 1 where Var(y_hat) ~ 0."""
    names = list(dict.fromkeys(outputs.values()))
    ops = _ops(model)
    runs = [capture(capture_session(m, names, providers), names, data.batches(batch))
            for m in (dense, model)]
    acc: dict[str, list] = {}
    for (_, ya), (_, yb) in zip(*runs):
        for label, t in outputs.items():
            ax = 1 if ops[label] == "Conv" else -1
            y = np.moveaxis(ya[t], ax, -1).reshape(-1, ya[t].shape[ax]).astype(np.float64)
            z = np.moveaxis(yb[t], ax, -1).reshape(-1, yb[t].shape[ax]).astype(np.float64)
            if label not in acc:  # shifted sums: no cancellation for large means
                acc[label] = [y.mean(0), z.mean(0), 0, 0.0, 0.0, 0.0, 0.0]
            k = acc[label]
            y, z = y - k[0], z - k[1]
            k[2] += len(y)
            k[3] = k[3] + y.sum(0)
            k[4] = k[4] + z.sum(0)
            k[5] = k[5] + (z * z).sum(0)
            k[6] = k[6] + (y * z).sum(0)
    out = {}
    for label, (ky, kz, n, sy, sz, szz, syz) in acc.items():
        my, mz = sy / n, sz / n
        var = szz / n - mz * mz
        cov = syz / n - my * mz
        tiny = var <= 1e-12 * (np.square(mz + kz) + 1e-30)
        a = np.where(tiny, 1.0, cov / np.where(tiny, 1.0, var))
        out[label] = (my + ky, mz + kz, a)
    return out


@dataclass
class Correction:
    shifts: list[float] = field(default_factory=list)  # mean |shift| per level
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # weight -> a [out channels]

    def summary(self) -> dict:
        d: dict = {"mean_abs_shift_per_pass": self.shifts}
        if self.scales:
            dev = np.concatenate([np.abs(a - 1.0) for a in self.scales.values()])
            d["scale"] = {"layers": len(self.scales), "mean_abs_deviation": float(dev.mean()),
                          "max_abs_deviation": float(dev.max())}
        return d

    def rescale_codes(self, qweights: dict[str, QuantizedWeight], layers: list[Layer]
                      ) -> dict[str, QuantizedWeight]:
        """The quantized weights with the channel scales folded into their DQ scales."""
        out = dict(qweights)
        for L in layers:
            a, q = self.scales.get(L.weight), qweights.get(L.weight)
            if a is None or q is None:
                continue
            axis = 1 if L.layout == "cols" else 0  # the output-channel axis
            shape = [1] * q.scale.ndim
            shape[0 if q.block_size is None else axis] = -1
            s = (q.scale * a.reshape(shape)).astype(np.float32)
            out[L.weight] = dataclasses.replace(q, scale=s)
        return out


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


def correct_outputs(dense: onnx.ModelProto, compressed: onnx.ModelProto, layers: list[Layer],
                    data: DataSet, batch: int, providers: list[str], scale: bool = False
                    ) -> tuple[onnx.ModelProto, list[str], Correction]:
    """Copy of `compressed` with the corrections folded in; reasons for layers left alone
    (or without a scale); and what was corrected.

    Layers are corrected level by level in topological order (one onnxruntime pass each, two
    with `scale`), each measured with every upstream correction already in place; correcting
    all at once would count upstream shifts twice."""
    out = onnx.ModelProto()
    out.CopyFrom(compressed)
    targets, skipped = bias_targets(out, layers)
    corr = Correction()
    scalable, why = _scalable(layers) if scale else ({}, [])
    skipped += why
    if not targets:
        return out, skipped, corr
    outputs = {label: o for label, (_, _, o) in targets.items()}
    ref = {} if scale else _output_means(dense, outputs, data, batch, providers)
    for level in _depth_levels(out, set(targets)):
        sub = {k: outputs[k] for k in level}
        a: dict[str, np.ndarray] = {}
        if scale:
            stats = _paired_stats(dense, out, sub, data, batch, providers)
            a = {k: stats[k][2] for k in level if k in scalable}
            delta = {k: stats[k][0] - a.get(k, 1.0) * stats[k][1] for k in level}
            plain = {k: stats[k][0] - stats[k][1] for k in level}
        else:
            got = _output_means(out, sub, data, batch, providers)
            delta = plain = {k: ref[k] - got[k] for k in level}
        corr.shifts.append(float(np.mean([np.abs(v).mean() for v in plain.values()])))
        _fold(out, {k: targets[k] for k in level}, delta, a)
        if a:
            out = _scale_rows(out, {scalable[k]: v for k, v in a.items()})
            corr.scales.update({scalable[k].weight: v for k, v in a.items()})
    return out, skipped, corr


def _scale_rows(model: onnx.ModelProto, factors: dict[Layer, np.ndarray]) -> onnx.ModelProto:
    weights = constant_weights(model.graph)
    new = {}
    for L, a in factors.items():
        W = L.to_matrix(numpy_helper.to_array(weights[L.weight][1])).astype(np.float64)
        G, r, d = W.shape
        new[L.weight] = L.from_matrix((W.reshape(G * r, d) * a[:, None]).reshape(G, r, d))
    return apply_weights(model, list(factors), new)
