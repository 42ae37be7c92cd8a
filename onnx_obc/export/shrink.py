"""Physically remove channels: the producer's weight rows and bias, the per-channel
constants in between (BatchNormalization parameters, Add/Mul/PRelu constants, depthwise
Conv weight rows and bias, whose `group` follows), and the consumer's weight columns; each
an initializer or a Constant node's value (rewritten in place, still a Constant node). For a
whole-head site (channels/heads.py) each channel is a head: dh rows / columns each, the
query and key projections (and biases) lose theirs too, and each Reshape into or out of
the heads gets its own shape constant with the kept head count. A gated unit's other
producer (channels/gated.py) loses the same rows.

The edit goes through onnx-graphsurgeon; intermediate shapes are cleared and re-inferred,
and the result passes onnx.checker with full (strict) shape inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..diskdata import as_inputs
from ..errors import ModelError
from ..layers import Layer, node_label
from .graph import constant, export_graph, model_opset


def weight_axes(L: Layer) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of L's ONNX weight."""
    return (1, 0) if L.layout in ("cols", "deconv") else (0, 1)


def shrink(model: onnx.ModelProto, sites: Sequence[Any], keep: Sequence[np.ndarray],
           weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Copy of `model` keeping channels `keep[i]` (sorted ids) of `sites[i]`
    (channels.patterns.Site); `weights` (name -> ONNX-layout array) replace consumer
    weights first (the OBS-updated values, full shape)."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    labels = {node_label(n, i): i for i, n in enumerate(model.graph.node)}
    values: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (weights or {}).items()}
    cuts: dict[str, dict[int, list[np.ndarray]]] = {}  # name -> axis -> entries kept, in
    # pieces (a fused gate-up projection keeps two blocks of its rows)

    per_group: dict[str, tuple[np.ndarray, int]] = {}  # a grouped consumer's kept inputs
    joined: dict[str, tuple[int, int, list]] = {}  # a Concat's consumer: axis, inputs, cut

    def cut(name: str, axis: int, kept: np.ndarray) -> None:
        cuts.setdefault(name, {}).setdefault(axis, []).append(kept)

    for site, kept in zip(sites, keep):
        kept = np.asarray(kept, dtype=np.int64)
        if len(kept) == site.channels:
            continue
        if len(kept) == 0:
            raise ModelError(f"cannot remove every channel of {site.producer.name!r}")
        rows = _expand(kept, site.unit)
        blocks = site.split.blocks if site.split is not None else 1  # fused QKV: 3
        produced = np.concatenate([b * site.channels * site.unit + rows for b in range(blocks)])
        cut(site.producer.weight, weight_axes(site.producer)[0], site.producer_rows(produced))
        for name, axis in site.outer:  # its bias, where a Split takes part of its rows
            cut(name, axis, site.producer_rows(produced))
        if site.consumer.layout == "conv" and site.consumer.groups > 1:  # each group its own
            per_group[site.consumer.weight] = (rows, site.consumer.groups)  # columns
        elif site.span or site.spans:  # one input of a Concat: each consumer cut once
            gone = np.setdiff1d(np.arange(site.channels), kept)  # for all of its inputs
            for c, offset, span in site.reads():
                joined.setdefault(c.weight, (weight_axes(c)[1], span, []))[2].append(
                    offset + gone)
        else:
            for c in site.consumers:  # `also`: readers of the same channels (fanout.py)
                cut(c.weight, weight_axes(c)[1], rows)
        for name, axis in site.sliced:
            cut(name, axis, produced)
        for label in site.grouped:
            graph.nodes[labels[label]].attrs["group"] = len(kept)
        for name, axis, per, first in tied_cuts(site):  # query / key projections, a gate
            cut(name, axis, first + _expand(kept, per))
        for label, j, vals, index, per in (*site.shapes, *(site.split.shapes if site.split
                                                           else ())):  # shape entries
            node = graph.nodes[labels[label]]
            shape = np.array(vals, dtype=np.int64)
            shape[index] = len(kept) * per
            node.inputs[j] = gs.Constant(f"{node.inputs[j].name}.{label}.heads", shape)
    for name, (axis, span, gone) in joined.items():  # every other input channel stays
        cut(name, axis, np.setdiff1d(np.arange(span), np.concatenate(gone)))
    for name in dict.fromkeys([*per_group, *cuts]):
        arr = values[name] if name in values else read_constant(tensors[name])
        if name in per_group:
            arr = _group_columns(arr, *per_group[name])
        for axis, pieces in cuts.get(name, {}).items():
            arr = np.take(arr, np.concatenate(pieces), axis=axis)
        values[name] = arr
    for name, arr in values.items():
        write_constant(tensors[name], arr)
    outer = {t.name for t in [*graph.inputs, *graph.outputs]}
    for t in tensors.values():
        if isinstance(t, gs.Variable) and t.name not in outer:
            t.shape = None
    out = export_graph(graph, model, model_opset(model))
    return checked(out)


def _group_columns(w: np.ndarray, kept: np.ndarray, G: int) -> np.ndarray:
    """A grouped Conv weight [M, C / G, *k] keeping the input channels `kept` (global ids,
    as many in each group): each group's output rows keep their own group's."""
    M, per = w.shape[0] // G, w.shape[1]
    return np.concatenate([np.take(w[g * M:(g + 1) * M], kept[kept // per == g] - g * per,
                                   axis=1) for g in range(G)])


def tied_cuts(site: Any) -> tuple[tuple[str, int, int, int], ...]:
    """Every (constant, axis, entries per channel, first entry) cut with `site`'s channels
    besides its producer's weight and `sliced`: a head site's query / key projections, a
    gated unit's other producer (or a fused one's second half) and its constants
    (channels/gated.py)."""
    heads = tuple((*x, 0) for x in site.split.tied) if site.split is not None else ()
    return (*heads, *(site.gate.cuts(site.unit) if site.gate is not None else ()))


def read_constant(t: gs.Tensor) -> np.ndarray:
    """The payload of an initializer (gs.Constant) or of the Constant node writing `t`."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    key, v = _constant_attr(t)
    if key == "value":
        return np.asarray(v.values)
    return np.asarray(v, dtype=np.float32 if key.startswith("value_float") else np.int64)


def write_constant(t: gs.Tensor, arr: np.ndarray) -> None:
    """Replace `t`'s payload in place, in its dtype: an initializer's values, or the Constant
    node's attribute (as one `value` tensor; its output keeps its name)."""
    if isinstance(t, gs.Constant):
        t.values = np.ascontiguousarray(arr.astype(t.dtype))
        return
    key, v = _constant_attr(t)
    dtype = v.dtype if key == "value" else read_constant(t).dtype
    t.inputs[0].attrs = {"value": constant("", np.ascontiguousarray(arr.astype(dtype)))}


def _constant_attr(t: gs.Tensor) -> tuple[str, Any]:
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None or node.op != "Constant" or len(node.attrs) != 1:
        raise ModelError(f"internal error: {t.name!r} is neither an initializer nor the "
                         "output of a one-attribute Constant node")
    return next(iter(node.attrs.items()))


def _expand(kept: np.ndarray, unit: int) -> np.ndarray:
    """Entry ids of channels `kept` that are `unit` consecutive entries each."""
    if unit == 1:
        return kept
    return (kept[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)


def checked(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its intermediate shapes re-inferred; ModelError when strict shape
    inference or the full checker fails."""
    try:
        return _strict(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the channel-pruned model fails shape inference: {exc}") from None


def check_input(model: onnx.ModelProto) -> None:
    """ModelError, before any work, where `model` as given already fails the check the
    shrunk model gets (checked): a stale or wrong value_info (a float16 conversion that
    left a Cast's declared type behind) would otherwise surface only after the whole
    channel stage, blamed on the pruning. `model` itself is not changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # tensors kept on disk are not in the proto: cheap for big ones
    try:
        _strict(copy)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(
            "--channels rewrites tensor shapes and checks the model it writes with ONNX's "
            "strict shape inference and full checker, and the input model fails them "
            f"already: {str(exc).strip()}. Fix the input (re-export it; "
            "onnx.shape_inference.infer_shapes(model, strict_mode=True) names the node) or "
            "compress without --channels") from None


def _strict(model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape inference and the full checker on `model`, its value_info cleared."""
    del model.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(as_inputs(out), full_check=True)  # kept tensors: no data
    return out
