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
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 4]), b.vi("wt", [4, 4])],
                   [b.vi("y", [b.BATCH, 4])])
    _, (s,) = find_layers(model)
    assert "computed by a Transpose node" in s.reason
