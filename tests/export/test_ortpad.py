"""Zero padding on the codes and shapes read from the codes (onnxruntime target): a "same"
Pad whose pads the graph computes from Shape (EfficientNet-Lite0's export) runs on uint8
with the zero point as its value, the DQ / Q around it and the Shape's DQ leave the optimized
graph, and the outputs are those of the float-Pad placement; a Pad that is not a zero
constant pad, or reads a float MaxPool, stays as it was."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import ortpad
from onnx_obc.layers import constant_weights

from .. import builders as b
from .test_onnxruntime import compressed, optimized_ops, rel, run


def same_pad_block(mode: str = "constant", value: float | None = None,
                   pool: bool = False) -> onnx.ModelProto:
    """x [N, 3, 9, 9] --Pad(1, 1) (constant pads)--> c1 (3x3) --Clip(0, 6)--> a
       --Pad (pads from Shape(a): (9 - H) // 2 + 1 each side)--> c2 (depthwise 3x3)
       --c3 (1x1)--> y [N, 4, 9, 9];
    mode / value: the second Pad's; pool: a float per-channel Mul (crepe's batch norm after
    its ReLU) and a MaxPool(1x1) between the Clip and that Pad."""
    a = "a"
    nodes = [helper.make_node("Pad", ["x", "stem_pads"], ["xp"], name="stem_pad"),
             helper.make_node("Conv", ["xp", "W1", "B1"], ["c"], name="c1"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="relu6")]
    if pool:
        nodes += [helper.make_node("Mul", ["a", "bn"], ["an"], name="bn"),
                  helper.make_node("MaxPool", ["an"], ["m"], name="pool", kernel_shape=[1, 1])]
        a = "m"
    nodes += [helper.make_node("Shape", [a], ["shape"], name="shape"),
              helper.make_node("Gather", ["shape", "two"], ["h"], name="h", axis=0),
              helper.make_node("Sub", ["nine", "h"], ["d"], name="d"),
              helper.make_node("Div", ["d", "two1"], ["half"], name="half"),
              helper.make_node("Add", ["half", "one"], ["p"], name="p"),
              helper.make_node("Concat", ["zeros2", "p", "p", "zeros2", "p", "p"], ["pads"],
                               name="pads", axis=0),
              helper.make_node("Pad", [a, "pads"] + ([] if value is None else ["value"]),
                               ["ap"], name="same_pad", mode=mode),
              helper.make_node("Conv", ["ap", "W2", "B2"], ["z"], name="c2", group=6),
              helper.make_node("Conv", ["z", "W3", "B3"], ["y"], name="c3")]
    inits = [b.weight("W1", (6, 3, 3, 3), 0), b.weight("B1", (6,), 1),
             b.weight("W2", (6, 1, 3, 3), 2), b.weight("B2", (6,), 3),
             b.weight("W3", (4, 6, 1, 1), 4), b.weight("B3", (4,), 5),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "stem_pads"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([2], np.int64), "two1"),
             numpy_helper.from_array(np.array([9], np.int64), "nine"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.zeros(2, np.int64), "zeros2")]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
    if pool:
        inits.append(numpy_helper.from_array(np.linspace(0.5, 1.5, 6, dtype=np.float32
                                                         ).reshape(1, 6, 1, 1), "bn"))
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 9, 9])], [b.vi("y", [b.BATCH, 4, 9, 9])],
                  inits)


def export(model: onnx.ModelProto, on: bool, monkeypatch, act_type: str = "u8"
           ) -> tuple[onnx.ModelProto, dict]:
    monkeypatch.setattr(ortpad, "PAD_CODES", on)
    monkeypatch.setattr(ortpad, "SHAPE_CODES", on)
    out, feed, _ = compressed(model, act_type=act_type, seed=3)
    onnx.checker.check_model(out, full_check=True)
    return out, feed


def pad_input_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)}
    return {n.name: types.get(n.input[0]) for n in model.graph.node if n.op_type == "Pad"}


def test_same_pads_run_on_the_codes_and_the_float_copies_leave(monkeypatch) -> None:
    model = same_pad_block()
    on, feed = export(model, True, monkeypatch)
    off, _ = export(model, False, monkeypatch)
    u8 = onnx.TensorProto.UINT8
    assert pad_input_types(on) == {"stem_pad": u8, "same_pad": u8}
    assert set(pad_input_types(off).values()) == {onnx.TensorProto.FLOAT}
    shape = next(n for n in on.graph.node if n.op_type == "Shape")
    producer = {o: n.op_type for n in on.graph.node for o in n.output}
    assert producer[shape.input[0]] == "QuantizeLinear"  # Shape reads the codes
    ops_on, ops_off = optimized_ops(on), optimized_ops(off)
    assert ops_on["QLinearConv"] == ops_off["QLinearConv"] == 2 and ops_on["Pad"] == 2
    # gone: the DQ and Q around the second Pad and the Shape's DQ (the stem's Q only moves)
    qdq = {k: ops["QuantizeLinear"] + ops["DequantizeLinear"] for k, ops in (
        ("on", ops_on), ("off", ops_off))}
    assert qdq["off"] - qdq["on"] >= 3
    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    np.testing.assert_allclose(run(on, feed, full), run(off, feed, full), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [{"mode": "reflect"}, {"value": 0.5}, {"pool": True}])
def test_other_pads_stay_as_they_were(monkeypatch, kw) -> None:
    """A reflect pad or a non-zero pad value is no pad by the zero point; after a float
    MaxPool, onnxruntime would move the Q up and run the MaxPool on uint8 (crepe: 9x slower
    than its float kernel), so that Pad keeps its float input."""
    model = same_pad_block(**kw)
    on, feed = export(model, True, monkeypatch)
    assert pad_input_types(on)["same_pad"] == onnx.TensorProto.FLOAT
    assert pad_input_types(on)["stem_pad"] == onnx.TensorProto.UINT8
    off, _ = export(model, False, monkeypatch)
    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the same codes; a float stem conv may run another kernel (a rounding flip or two)
    assert rel(run(on, feed, full), run(off, feed, full)) < 1e-3


def test_int8_codes_keep_the_float_pad(monkeypatch) -> None:
    """With int8 activations onnxruntime (x86) rewrites each adjacent Q -> DQ pair to uint8
    before fusing; a Pad or a Shape between them kept the next Conv float, so int8 codes
    keep the float Pad and the Shape's DequantizeLinear: the same kernels either way."""
    model = same_pad_block()
    on, feed = export(model, True, monkeypatch, "s8")
    off, _ = export(model, False, monkeypatch, "s8")
    assert set(pad_input_types(on).values()) == {onnx.TensorProto.FLOAT}
    assert optimized_ops(on)["QLinearConv"] == optimized_ops(off)["QLinearConv"]


def test_zero_pad_reads_the_pad_value_and_mode() -> None:
    g = same_pad_block().graph
    pad = next(n for n in g.node if n.name == "same_pad")
    assert ortpad.zero_pad(pad, constant_weights(g))
    g = same_pad_block(value=0.0).graph
    assert ortpad.zero_pad(next(n for n in g.node if n.name == "same_pad"), constant_weights(g))
    g = same_pad_block(value=0.5).graph
    assert not ortpad.zero_pad(next(n for n in g.node if n.name == "same_pad"),
                               constant_weights(g))
    g = same_pad_block(mode="edge").graph
    assert not ortpad.zero_pad(next(n for n in g.node if n.name == "same_pad"),
                               constant_weights(g))
