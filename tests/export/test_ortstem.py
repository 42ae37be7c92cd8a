"""The onnxruntime target's float stem (export/ortstem.py): with 8-bit activations the Convs
on the image input and a narrow depthwise Conv right after them stay float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_obc import convert
from onnx_obc.errors import ModelError
from onnx_obc.export import kept_float
from onnx_obc.export.ortstem import stem_layers
from onnx_obc.layers import find_layers

from .. import builders as b
from .test_onnxruntime import optimized_ops


def mobile(c_in: int = 3, dw: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x [N, c_in, 16, 16] -> Pad -> stem 3x3 s2 -> HardSwish -> depthwise 3x3 (dw channels)
    -> Relu -> 1x1 (32) -> depthwise 3x3 (32) -> Relu -> 1x1 with 3 outputs -> 3x3 on those
    3 channels -> GlobalAveragePool, Flatten -> fc [N, 5]. The last 3x3 reads 3 channels but
    not the model input: not a stem."""
    conv = helper.make_node
    nodes = [conv("Pad", ["x", "pads"], ["xp"], name="pad"),
             conv("Conv", ["xp", "Ws", "Bs"], ["s"], name="stem", strides=[2, 2]),
             conv("HardSwish", ["s"], ["sh"], name="hs"),
             conv("Conv", ["sh", "Wd", "Bd"], ["d"], name="dw", pads=[1] * 4, group=dw),
             conv("Relu", ["d"], ["dr"], name="r1"),
             conv("Conv", ["dr", "Wp", "Bp"], ["p"], name="pw"),
             conv("Conv", ["p", "Wd2", "Bd2"], ["d2"], name="dw2", pads=[1] * 4, group=32),
             conv("Relu", ["d2"], ["d2r"], name="r2"),
             conv("Conv", ["d2r", "W3", "B3"], ["t"], name="to3"),
             conv("Conv", ["t", "Wn", "Bn"], ["n"], name="narrow", pads=[1] * 4),
             conv("GlobalAveragePool", ["n"], ["g"], name="gap"),
             conv("Flatten", ["g"], ["f"], name="flatten", axis=1),
             conv("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             b.weight("Ws", (dw, c_in, 3, 3), seed), b.weight("Bs", (dw,), seed + 1),
             b.weight("Wd", (dw, 1, 3, 3), seed + 2), b.weight("Bd", (dw,), seed + 3),
             b.weight("Wp", (32, dw, 1, 1), seed + 4), b.weight("Bp", (32,), seed + 5),
             b.weight("Wd2", (32, 1, 3, 3), seed + 6), b.weight("Bd2", (32,), seed + 7),
             b.weight("W3", (3, 32, 1, 1), seed + 8), b.weight("B3", (3,), seed + 9),
             b.weight("Wn", (8, 3, 3, 3), seed + 10), b.weight("Bn", (8,), seed + 11),
             b.weight("Wf", (5, 8), seed + 12), b.weight("bf", (5,), seed + 13)]
    return b.make(nodes, [b.vi("x", [b.BATCH, c_in, 16, 16])], [b.vi("y", [b.BATCH, 5])], inits)


def kept(model: onnx.ModelProto) -> set[str]:
    return set(stem_layers(model, find_layers(model)[0]))


def test_the_stem_and_the_depthwise_after_it_are_kept_float() -> None:
    reasons = stem_layers(m := mobile(), find_layers(m)[0])
    assert set(reasons) == {"Ws", "Wd"}  # not pw, dw2 (after pw), narrow (not on the input)
    assert "stem conv on the model input (3 input channels)" in reasons["Ws"]
    assert "depthwise conv on 16 channels after the float stem" in reasons["Wd"]
    assert all("--int8-stem" in r for r in reasons.values())


@pytest.mark.parametrize("c_in, dw, expected", [
    (1, 16, {"Ws", "Wd"}),  # a grey image
    (4, 32, {"Ws", "Wd"}),  # the limits
    (8, 16, set()),  # 8 input channels: not an image stem, nor the depthwise after it
    (3, 64, {"Ws"}),  # a wide depthwise conv runs as fast on integers
])
def test_the_limits(c_in: int, dw: int, expected: set[str]) -> None:
    assert kept(mobile(c_in=c_in, dw=dw)) == expected


def test_a_depthwise_conv_reading_the_stem_and_another_layer_is_quantized() -> None:
    m = mobile()
    g = m.graph
    g.node.insert(3, helper.make_node("Conv", ["x", "Wo", "Bo"], ["o"], name="other",
                                      strides=[2, 2], pads=[0, 0, 1, 1]))
    g.node.insert(4, helper.make_node("Add", ["sh", "o"], ["sho"], name="add"))
    g.initializer.extend([b.weight("Wo", (16, 3, 3, 3), 20), b.weight("Bo", (16,), 21)])
    next(n for n in g.node if n.name == "dw").input[0] = "sho"
    onnx.checker.check_model(m)
    assert kept(m) == {"Ws", "Wo", "Wd"}  # both stems; dw reads only stems
    g.initializer.remove(next(t for t in g.initializer if t.name == "Wo"))
    g.initializer.append(b.weight("Wo", (16, 8, 3, 3), 20))  # no longer a stem
    m.graph.input.append(b.vi("x8", [b.BATCH, 8, 16, 16]))
    next(n for n in g.node if n.name == "other").input[0] = "x8"
    assert kept(m) == {"Ws"}


def test_only_the_onnxruntime_target_with_8_bit_activations_keeps_it() -> None:
    m = mobile()
    layers, skipped = find_layers(m)
    left, skip = kept_float(m, layers, skipped, "onnxruntime", 8)
    assert {L.weight for L in layers} - {L.weight for L in left} == {"Ws", "Wd"}
    assert {s.node for s in skip[len(skipped):]} == {"stem", "dw"}
    for target, act_bits, options in [("tensorrt", 8, {}), ("onnxruntime", None, {}),
                                      ("onnxruntime", 8, {"float_stem": False})]:
        assert kept_float(m, layers, skipped, target, act_bits, **options) == (layers, skipped)


def test_a_model_that_is_all_stem_is_refused() -> None:
    m = b.conv(c_in=3, c_out=8)
    with pytest.raises(ModelError, match="every layer is kept float for onnxruntime"):
        kept_float(m, *find_layers(m), "onnxruntime", 8)


def test_convert_keeps_the_stem_float_and_says_why(tmp_path) -> None:
    m = mobile()
    calib = [b.feeds(m, 24, seed=2)]
    runs = {}
    for stem in (True, False):
        r = convert(m, tmp_path / f"{stem}.onnx", calib=calib, bits=8, act_bits=8,
                    runtime="onnxruntime", float_stem=stem, progress=False)
        runs[stem] = r
        onnx.checker.check_model(r.model, full_check=True)
    float_run, int_run = runs[True], runs[False]
    why = {s.node: s.reason for s in float_run.report.skipped}
    assert set(why) == {"stem", "dw"} and "kept float for onnxruntime" in why["stem"]
    assert not any("kept float" in s.reason for s in int_run.report.skipped)
    assert {r.name for r in float_run.report.layers} == {"pw", "dw2", "to3", "narrow", "fc"}
    ops = optimized_ops(float_run.model)
    assert ops["QLinearConv"] == 4 and ops["Conv"] + ops["FusedConv"] + ops["NchwcConv"] >= 1
    assert optimized_ops(int_run.model)["QLinearConv"] == 6
    # the stem's weights stay as they were; nothing quantizes the model input
    stem_w = next(t for t in float_run.model.graph.initializer if t.name == "Ws")
    assert stem_w.data_type == onnx.TensorProto.FLOAT
    readers = Counter(n.op_type for n in float_run.model.graph.node if "x" in n.input)
    assert readers == {"Pad": 1}
    assert float_run.report.fusion["layers"] == 5


def test_the_channel_stage_still_prunes_the_stem() -> None:
    """--channels with W8A8 on onnxruntime: the stem producer loses channels (the channel
    stage works on every selected layer), then stays float; its consumer is quantized."""
    from tests.channels import graphs

    model = graphs.conv_bn_relu_conv(mid=16)
    r = convert(model, None, calib=[b.feeds(model, 128, seed=1)], channels=0.3, bits=8,
                act_bits=8, runtime="onnxruntime", progress=False)
    (row,) = r.report.channels["rows"]
    assert row["removed"] > 0
    kept_ = 16 - row["removed"]
    shapes = [tuple(t.dims) for t in r.model.graph.initializer]
    assert (kept_, 3, 3, 3) in shapes  # the stem's float weight, shrunk
    assert [s.node for s in r.report.skipped if "stem" in s.reason] == ["prod"]
    assert [L.name for L in r.report.layers] == ["cons"]


def test_unnamed_nodes_are_followed_by_their_labels() -> None:
    """Layer uses name unnamed nodes "<Op #i>": the walk back must know them as layers."""
    m = mobile()
    for n in m.graph.node:
        n.name = ""
    assert kept(m) == {"Ws", "Wd"}
