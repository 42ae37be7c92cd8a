"""The onnxruntime target's grids around an integer Concat (ortplace.JOIN): an input only the
Concat reads is quantized once, onto the Concat's grid; the output takes the inputs' grid
where every other input shares one that holds the rest; an input read elsewhere, or a grid
that does not hold every input, keeps its own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnx_obc.export import build, ortplace, ortplan
from onnx_obc.layers import find_layers

from .. import builders as b
from . import helpers as h
from .test_onnxruntime import compressed, optimized_ops
from .test_ortplan import c2f_cnn


def two_branch_cnn(shared: bool = False, relu: bool = False) -> onnx.ModelProto:
    """x [N, 3, 8, 8] --c1--> a, x --c2--> b [N, 4] each; Concat(a, b) --c3--> y [N, 6];
    shared: `a` also feeds c4 --> z, a second output; relu: a Relu after c1."""
    pre = [helper.make_node("Conv", ["x", "W1", "B1"], ["a0"], name="c1", pads=[1] * 4),
           helper.make_node("Relu", ["a0"], ["a"], name="relu")] if relu else [
        helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4)]
    nodes = [*pre,
             helper.make_node("Conv", ["x", "W2", "B2"], ["b"], name="c2", pads=[1] * 4),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "W3", "B3"], ["y"], name="c3")]
    inits = [b.weight("W1", (4, 3, 3, 3), 0), b.weight("B1", (4,), 1),
             b.weight("W2", (4, 3, 3, 3), 2), b.weight("B2", (4,), 3),
             b.weight("W3", (6, 8, 1, 1), 4), b.weight("B3", (6,), 5)]
    outs = [b.vi("y", [b.BATCH, 6, 8, 8])]
    if shared:
        nodes.append(helper.make_node("Conv", ["a", "W4", "B4"], ["z"], name="c4"))
        inits += [b.weight("W4", (2, 4, 1, 1), 6), b.weight("B4", (2,), 7)]
        outs.append(b.vi("z", [b.BATCH, 2, 8, 8]))
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 8, 8])], outs, inits)


def grids(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Quantized tensor -> (scale, zero point) of its QuantizeLinear."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    made = {o: n for n in model.graph.node for o in n.output}

    def value(name: str) -> np.ndarray:
        n = made.get(name)
        return inits[name] if n is None else onnx.numpy_helper.to_array(n.attribute[0].t)

    return {n.input[0]: (float(value(n.input[1])), int(value(n.input[2])))
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


def concat_error(model: onnx.ModelProto, dense: onnx.ModelProto, feed: dict) -> float:
    """Relative error of the dequantized Concat output that c3 reads (the QDQ graph run in
    float) against the Concat output of `dense` (the same weights, float activations)."""
    dq = next(n.input[0] for n in model.graph.node if n.name == "c3")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(dq))
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"]
                               ).run([dq], feed)[0]
    d = onnx.ModelProto()
    d.CopyFrom(dense)
    d.graph.output.append(helper.make_empty_tensor_value_info("cat"))
    ref = ort.InferenceSession(d.SerializeToString(), o, providers=["CPUExecutionProvider"]
                               ).run(["cat"], feed)[0]
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_inputs_only_the_concat_reads_take_its_grid(monkeypatch) -> None:
    """Both inputs are quantized onto the Concat's own grid (QLinearConcat copies their codes)
    and the Concat's output is nearer the float one than with each input on a grid of its own
    and requantized (one rounding instead of two); onnxruntime fuses the same kernels."""
    model = two_branch_cnn()
    new, feed, layers = compressed(model)
    monkeypatch.setattr(ortplace, "JOIN", False)
    old, _, _ = compressed(model)
    dense = build(model, layers, h.solutions(model, layers, bits=8))  # weights as in both
    g_new, g_old = grids(new), grids(old)
    assert g_new["a"] == g_new["b"] == g_new["cat"] == g_old["cat"]
    assert g_old["a"] != g_old["cat"]  # (min-max ranges here: b's is the Concat's)
    assert concat_error(new, dense, feed) < concat_error(old, dense, feed)
    ops_new, ops_old = optimized_ops(new), optimized_ops(old)
    for k in ("QLinearConv", "QLinearConcat"):
        assert ops_new[k] == ops_old[k] >= 1, (k, ops_new, ops_old)


def test_an_input_read_elsewhere_keeps_its_own_grid() -> None:
    new, _, _ = compressed(two_branch_cnn(shared=True))
    g = grids(new)
    assert g["b"] == g["cat"] and g["a"] != g["cat"]


def test_a_relu_output_keeps_a_grid_from_zero() -> None:
    """A Relu taken into its Conv (its grid starts at code 0, so onnxruntime drops it) keeps
    that grid when the Concat's does not start at 0."""
    new, _, _ = compressed(two_branch_cnn(relu=True))
    g = grids(new)
    assert g["a"][1] == 0 and g["cat"][1] != 0 and g["b"] == g["cat"] != g["a"]
    assert optimized_ops(new)["Relu"] == 0


def _c2f_params(r_range: tuple[float, float]) -> dict[str, ortplace.QParams]:
    model = c2f_cnn()
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    ranges = {t: (-1.0, 3.0) for t in p.tensors}
    ranges.update(r=r_range, cat=(-1.2, 3.5))
    return ortplace._params(model.graph, p, ranges, "u8")


def test_the_output_takes_the_grid_its_other_inputs_share() -> None:
    """YOLOv8's C2f: Concat(s0, s1, r), the halves s0 / s1 on the Split input's grid; where
    that grid holds r's range, the output and r take it (every input copied); where r reaches
    past the Concat's own grid, r keeps its own (not clipped) and so does the output."""
    inside = _c2f_params((-0.5, 2.0))
    assert inside["cat"] == inside["r"] == inside["s0"] == inside["a"]
    wider = _c2f_params((-0.5, 6.0))
    assert wider["cat"] == ortplace.qparams(-1.2, 3.5, "u8")
    assert wider["r"] == ortplace.qparams(-0.5, 6.0, "u8")
    assert wider["s0"] == wider["a"] == ortplace.qparams(-1.0, 3.0, "u8")
    # held by the Concat's grid but not by the halves': r on the Concat's, as is the output
    between = _c2f_params((-0.5, 3.4))
    assert between["r"] == between["cat"] == ortplace.qparams(-1.2, 3.5, "u8")
    assert between["s0"] == ortplace.qparams(-1.0, 3.0, "u8")
