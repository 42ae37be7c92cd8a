"""Sizes the FLOP count needs where shape inference leaves them unknown: exports that
compute their Reshape shapes at run time (Paddle: Shape -> Cast -> Concat) hide the
spatial and token sizes of every later layer, and an unknown size counts 1. One inference
on a small calibration batch fetches the layers' and attention MatMuls' inputs and outputs,
the operands of an Add before a Softmax (an attention mask: heads.py) and the input of a
Reshape into a layer or to 2-D rows (token rows flattened around a Gemm: flat.py), whose inferred
shape has an unknown size past the batch axis (channels/flops.py reads only those sizes,
never the batch), in a session of the run's Runtime (its providers and custom
ops, as sensitivity.py's); when it cannot run, the reason becomes a run warning."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..specs import LAYER_OPS as OPS


def probe_feed(data: Any, n: int) -> dict[str, np.ndarray] | None:
    """The first batch of `n` calibration samples of `data` (a calib.DataSet; `n` the run's
    batch, which a model with a fixed batch axis fixes), None without any."""
    try:
        return next(data.batches(n))[1]
    except (StopIteration, AttributeError):
        return None


def probe_sizes(model: onnx.ModelProto, feed: dict[str, np.ndarray] | None,
                runtime: Any = None) -> tuple[dict[str, list[int | None]], str]:
    """(tensor -> dims measured on `feed` (batch axis None) for the layer / attention MatMul
    tensors whose inferred shape is unknown past the batch axis, why they were not
    measured): ({}, "") when every one is known; ({}, the reason) without a feed or when
    onnxruntime cannot run the model with `runtime` (capture.Runtime: the run's providers
    and custom ops; default the CPU), the FLOP count then counting the unknown sizes 1."""
    from .patterns import graph_of

    g = graph_of(model)
    masks = {id(n) for n in g.nodes.values() if n.op_type == "Add" and any(  # before a
        u.op_type == "Softmax" for _, u in g.users.get(n.output[0], []))}  # Softmax: a mask
    flats = {id(n) for n in g.nodes.values() if n.op_type == "Reshape" and (any(  # rows into
        u.op_type in OPS for _, u in g.users.get(n.output[0], [])) or (  # a Gemm (flat.py),
        len(g.shapes.get(n.output[0]) or []) == 2  # or flattened to 2-D rows before
        and len(g.shapes.get(n.input[0]) or []) > 2))}  # row-wise ops do (OPT's LayerNorm)
    names = list(dict.fromkeys(
        t for n in g.nodes.values() if n.op_type in OPS and n.domain in ("", "ai.onnx")
        or id(n) in masks or id(n) in flats
        for t in ([n.input[0]] if id(n) in flats else [*n.input[:2], n.output[0]])
        if t and t not in g.inits
        and (not g.shapes.get(t) or None in g.shapes[t][1:])))  # [] is no shape here
    if not names:
        return {}, ""
    why = (f"channel pruning counts the FLOPs with {len(names)} layer tensor sizes unknown "
           "to shape inference taken as 1 (the per-site savings and --channels' fraction may "
           "be off): ")
    if feed is None:
        return {}, why + "no calibration sample to measure them on"
    try:
        s = _session(model, names, runtime)
        inputs = {i.name for i in s.get_inputs()}
        outs = s.run(names, {k: v for k, v in feed.items() if k in inputs})
    except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run: inferred shapes
        return {}, why + f"onnxruntime could not run the model ({e})"
    return {t: [None, *np.shape(y)[1:]] for t, y in zip(names, outs)}, ""


def _session(model: onnx.ModelProto, names: list[str], runtime: Any) -> Any:
    """A session of `model` fetching `names` too, built as the run's (capture.Runtime)."""
    from ..capture import Runtime, capture_session

    return capture_session(model, names, runtime or Runtime())
