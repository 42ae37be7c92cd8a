"""skips: why a Conv/Gemm/MatMul is no layer; a model quantized already is refused with
what to give instead, and the reasons of a model with nothing to compress are kept short."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_obc.errors import ModelError
from onnx_obc.layers import find_layers, select_layers
from onnx_obc.specs import Selection

from . import builders as b


def _quantized_mlp(layers: int) -> onnx.ModelProto:
    """x -> (MatMul on DequantizeLinear(int8 codes)) x layers: onnxruntime's QDQ output."""
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        codes = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
        inits += [numpy_helper.from_array(codes, f"w{i}_q"),
                  numpy_helper.from_array(np.array(0.1, np.float32), f"w{i}_s")]
        nodes += [helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s"], [f"w{i}"]),
                  helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"fc{i}")]
        x = f"y{i}"
    return b.make(nodes, [b.vi("x", [b.BATCH, 4])], [b.vi(x, [b.BATCH, 4])], inits)


def test_a_quantized_model_is_refused_naming_the_float_model_to_give():
    model = _quantized_mlp(5)
    layers, skipped = find_layers(model)
    assert not layers and len(skipped) == 5
    assert "the dequantized codes 'w0_q': the model is quantized already" in skipped[0].reason
    with pytest.raises(ModelError, match=r"quantized already: the weights of 5 layers \(fc0, "
                                         r"fc1, fc2, \.\.\.\) are DequantizeLinear.*float model"):
        select_layers(model)


def test_nothing_to_compress_names_three_reasons_and_counts_the_rest():
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}")
             for i in range(5)]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4])] + [b.vi(f"w{i}", [4, 4]) for i in range(5)],
                   [b.vi(f"y{i}", [b.BATCH, 4]) for i in range(5)])
    with pytest.raises(ModelError) as exc:
        select_layers(model)
    msg = str(exc.value)
    assert msg.count("is a graph input, not a constant") == 3 and "; 2 more)" in msg


def test_selection_reasons():
    model = b.mlp((4, 6, 3))
    _, skipped = find_layers(model, Selection(exclude=("*",)))
    assert skipped and all(s.reason.startswith("excluded by --exclude") for s in skipped)
    _, skipped = find_layers(model, Selection(op_types=("Conv",)))
    assert all(s.reason.startswith("op type MatMul not selected") for s in skipped)


def test_a_weight_computed_at_run_time_says_so():
    """From constants (a Transpose of an initializer): said so, with the way out; from
    the model's inputs (attention's scores and A @ V): a product of two activations, one
    reason text for all of them (the report makes them one line)."""
    from onnx_obc.skips import TWO_ACTIVATIONS

    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4])], [b.vi("y", [b.BATCH, 4])],
                   [b.weight("wt", (4, 4), 0)])
    _, (s,) = find_layers(model)
    assert "computed from constants by a Transpose node at run time" in s.reason
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4]), b.vi("wt", [4, 4])],
                   [b.vi("y", [b.BATCH, 4])])
    _, (s,) = find_layers(model)
    assert s.reason == TWO_ACTIVATIONS
    from tests.channels import graphs  # single-head attention: the scores and A @ V

    layers, skipped = find_layers(graphs.attention())
    assert {x.node: x.reason for x in skipped} == {"scores": TWO_ACTIVATIONS,
                                                  "mix": TWO_ACTIVATIONS}
    assert len(layers) == 4


def _lstm_then_matmul(hidden: int = 32):
    """x [T, N, 32] --LSTM(W [1, 4h, 32], R [1, 4h, h])--> Y_h [1, N, h] --MatMul(V [h, 8])."""
    h = hidden
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["", "yh"], name="lstm", hidden_size=h),
             helper.make_node("MatMul", ["yh", "V"], ["y"], name="head")]
    inits = [b.weight("W", (1, 4 * h, 32), 0), b.weight("R", (1, 4 * h, h), 1),
             b.weight("V", (h, 8), 2)]
    return b.make(nodes, [b.vi("x", [5, b.BATCH, 32])], [b.vi("y", [1, b.BATCH, 8])], inits)


def test_the_weights_no_layer_holds_are_listed_with_their_share():
    """skips.outside: an LSTM's W and R (not a layer kind) are listed with their values and
    share of the model's; not where the written model rewrote them (DynamicQuantizeLSTM's
    int8 W and R), nor small constants, nor a layer's weight."""
    from onnx_obc.skips import OUTSIDE_MIN, outside

    model = _lstm_then_matmul()
    (s,) = outside(model, model)
    assert (s.node, s.op, s.weight) == ("lstm", "LSTM", "W")
    total = 128 * 32 + 128 * 32 + 32 * 8
    assert f"'W', 'R' (8,192 values, {8192 / total:.1%} of the model's)" in s.reason
    assert "DynamicQuantizeLSTM" in s.reason
    from onnx_obc import CompressConfig  # a run that asked for it: no hint (it did not apply)

    asked = CompressConfig.from_options(None, bits=8, act_bits=8, runtime="onnxruntime")
    (s2,) = outside(model, model, asked)
    assert s2.reason.endswith("stay as they are") and "DynamicQuantizeLSTM" not in s2.reason
    written = onnx.ModelProto()
    written.CopyFrom(model)
    w = next(t for t in written.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(np.zeros((1, 128, 32), np.int8), "W"))
    assert outside(model, written) == []  # rewritten by the export
    assert outside(_lstm_then_matmul(hidden=8), _lstm_then_matmul(hidden=8)) == [] and (
        4 * 8 * 32 < OUTSIDE_MIN)


def test_a_run_reports_the_weights_it_leaves_outside_the_layers():
    from onnx_obc import convert

    model = _lstm_then_matmul()
    r = convert(model, None, calib=b.feeds(model, 16), bits=8, progress=False)
    assert [s.op for s in r.report.skipped] == ["LSTM"]
    assert "lstm (LSTM): LSTM is no layer kind" in r.report.table()
