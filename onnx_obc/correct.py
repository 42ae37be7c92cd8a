"""Correction after compression: per-output-channel mean of every compressed layer's output,
compressed model versus dense model on the calibration data, folded into the biases.

    b_c  <-  b_c + (E[y_c] - E[y_hat_c])        (Gemm: C <- C + delta / beta)

y is the layer output in the dense model and y_hat in the compressed one (with its own,
already-compressed inputs), averaged over samples and positions per output channel. Means
shift downstream as upstream biases change, so layers are corrected in topological order,
level by level, each measured with the upstream corrections in place. Where a layer has no bias the bias input is added (Conv, Gemm); a MatMul is
corrected through the Add that consumes it when that Add's other input is a constant vector,
and otherwise left as it is, with the reason. Only bias values change (and missing bias
inputs are added); the weights and every other node stay as they were.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calib import DataSet
from .capture import capture, capture_session
from .layers import Layer, node_label


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


def _fold(model: onnx.ModelProto, targets: dict, delta: dict[str, np.ndarray]) -> None:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for label, (i, (kind, where), _) in targets.items():
        node = g.node[i]
        d = delta[label]
        if kind == "add":
            add = g.node[where]
            name = next(x for x in add.input if x != node.output[0])
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
        new = (b + d.reshape(b.shape) if b.size == d.size else b + d).astype(
            helper.tensor_dtype_to_np_dtype(t.data_type))
        t.CopyFrom(numpy_helper.from_array(new, t.name))


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


def correct_biases(dense: onnx.ModelProto, compressed: onnx.ModelProto, layers: list[Layer],
                   data: DataSet, batch: int, providers: list[str]
                   ) -> tuple[onnx.ModelProto, list[str], list[float]]:
    """Copy of `compressed` with mean-corrected biases; reasons for layers left alone; and the
    mean absolute per-channel shift corrected at each depth level.

    Layers are corrected level by level in topological order (one onnxruntime pass each), each
    measured with every upstream correction already in place; correcting all at once would
    count upstream shifts twice."""
    out = onnx.ModelProto()
    out.CopyFrom(compressed)
    targets, skipped = bias_targets(out, layers)
    if not targets:
        return out, skipped, []
    outputs = {label: o for label, (_, _, o) in targets.items()}
    ref = _output_means(dense, outputs, data, batch, providers)
    shifts = []
    for level in _depth_levels(out, set(targets)):
        got = _output_means(out, {k: outputs[k] for k in level}, data, batch, providers)
        delta = {k: ref[k] - got[k] for k in level}
        shifts.append(float(np.mean([np.abs(v).mean() for v in delta.values()])))
        _fold(out, {k: targets[k] for k in level}, delta)
    return out, skipped, shifts
