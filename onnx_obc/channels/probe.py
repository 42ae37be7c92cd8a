"""Sizes the FLOP count needs where shape inference leaves them unknown: exports that
compute their Reshape shapes at run time (Paddle: Shape -> Cast -> Concat) hide the
spatial and token sizes of every later layer, and an unknown size counts 1. One inference
on a small calibration batch fetches the layers' and attention MatMuls' inputs and outputs
whose inferred shape has an unknown size past the batch axis (channels/flops.py reads only
those sizes, never the batch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

OPS = ("Conv", "Gemm", "MatMul")


def probe_feed(data: Any, n: int = 2) -> dict[str, np.ndarray] | None:
    """The first `n` calibration samples of `data` (a calib.DataSet), None without any."""
    try:
        return next(data.batches(n))[1]
    except (StopIteration, AttributeError):
        return None


def probe_sizes(model: onnx.ModelProto, feed: dict[str, np.ndarray] | None
                ) -> dict[str, list[int | None]]:
    """Tensor -> dims measured on `feed` (batch axis None) for the layer / attention MatMul
    tensors whose inferred shape is unknown past the batch axis; {} when every one is known,
    without a feed, or when onnxruntime cannot run the model on the CPU."""
    from .patterns import graph_of

    g = graph_of(model)
    names = list(dict.fromkeys(
        t for n in g.nodes.values() if n.op_type in OPS and n.domain in ("", "ai.onnx")
        for t in [*n.input[:2], n.output[0]] if t and t not in g.inits
        and (not g.shapes.get(t) or None in g.shapes[t][1:])))  # [] is no shape here
    if not names or feed is None:
        return {}
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in known)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = s.run(names, {k: v for k, v in feed.items()
                             if k in {i.name for i in m.graph.input}})
    except Exception:  # noqa: BLE001 - custom ops, CPU-less types: keep the inferred shapes
        return {}
    return {t: [None, *np.shape(y)[1:]] for t, y in zip(names, outs)}
